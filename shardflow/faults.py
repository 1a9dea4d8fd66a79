"""Fault injection for the crash tests: a process kills itself (SIGKILL) at a named point.

Off unless the environment variable names the point, so production processes never die here.
The points mark the moments docs/reliability.md asks to crash at: between the phases of a
partition move, and around the commit of a transactional step.
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger("shardflow.faults")

REBALANCE_FAULT_ENV = "SHARDFLOW_REBALANCE_FAULT"
REBALANCE_FAULT_POINTS = ("after_fence", "mid_copy", "after_copy", "after_flip", "after_publish")

WORKER_FAULT_ENV = "SHARDFLOW_WORKER_FAULT"
# Inside a transactional step's transaction after its checkpoint was written (the commit is
# never sent), and after the commit before the worker acts on it.
WORKER_FAULT_POINTS = ("tx_before_commit", "tx_after_commit")
# In the relay (same variable): after an outbox message or a child's end was read and before
# it is delivered, and after the delivery before the message is deleted (or the parent
# marked told).
RELAY_FAULT_POINTS = ("relay_before_deliver", "relay_before_ack")


def fault_point(env: str, name: str) -> None:
    """SIGKILL this process if ``env`` names ``name``."""
    if os.environ.get(env) == name:
        log.critical("fault injection: killing process %d at %s", os.getpid(), name)
        os.kill(os.getpid(), signal.SIGKILL)
