"""Flow control: named queues with concurrency, per-key and rate limits, and priority."""

from shardflow.queues.queue import Queue

__all__ = ["Queue"]
