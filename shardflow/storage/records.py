"""Typed rows that cross the storage seam."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True, kw_only=True)
class NodeIdentity:
    """Which cluster a node belongs to, and under what name."""

    cluster_id: str
    node_name: str
    partition_count: int


@dataclass(frozen=True, kw_only=True)
class Ownership:
    """One partition a node owns (state ``owned``) or is moving away (``moving``)."""

    partition: int
    epoch: int
    state: str


@dataclass(frozen=True, kw_only=True)
class WorkflowRecord:
    """A workflow as stored on its node."""

    partition: int
    workflow_id: str
    name: str
    routing_key: str | None
    status: str
    # The App that started it ('' for workflows started before apps were recorded).
    app: str = ""
    input: Any = None
    output: Any = None
    error: dict[str, Any] | None = None
    run_at: datetime | None = None
    deadline_at: datetime | None = None
    claim_count: int = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None
    completed_at: datetime | None = None
    # The signal name it waits for while released (ctx.wait_for_signal), if any.
    waiting_for: str | None = None
    # A child workflow's parent, and the parent's routing key (where it lives).
    parent_id: str | None = None
    parent_key: str | None = None
    # The version of the App that started it (App(version=...)), if it had one.
    app_version: str | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled", "dead"})
# "queued": waiting in its queue for admission (docs/flow-control.md). "stuck": parked after
# a NonDeterminismError; not ended (`shardflow resume` runs it again).
STATUSES = (
    "queued",
    "pending",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "dead",
    "stuck",
)


@dataclass(frozen=True, kw_only=True)
class StepRecord:
    """One checkpoint: the recorded outcome of the step at ``step_seq``."""

    step_seq: int
    step_name: str
    status: str
    output: Any = None
    error: dict[str, Any] | None = None
    attempts: int = 1
    recorded_at: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class ClaimedWorkflow:
    """A workflow this worker now holds a lease on."""

    partition: int
    workflow_id: str
    name: str
    input: Any
    lease_token: str
    deadline_at: datetime | None
    claim_count: int
    retry_step_seq: int | None
    retry_attempts: int
    claimed_at: datetime
    # Given at start when it differs from the id (a child gets its parent's by default).
    routing_key: str | None = None
    # A child's parent: when the child ends, the relay tells the parent.
    parent_id: str | None = None
    # Cancelled with compensations registered: this run undoes instead of going on.
    cancel_requested: bool = False
    # The starter's trace context (shardflow/tracing.py), when tracing was configured.
    trace_context: str | None = None

    @property
    def key(self) -> str:
        """What routes to this workflow: its routing key, or its id."""
        return self.routing_key or self.workflow_id


@dataclass(frozen=True, kw_only=True)
class StalledWorkflow:
    """A running workflow whose lease a worker keeps renewing but that records nothing."""

    node: str
    partition: int
    workflow_id: str
    name: str
    app: str
    lease_owner: str | None
    claimed_at: datetime
    last_progress_at: datetime
    quiet_seconds: float


@dataclass(frozen=True, kw_only=True)
class UnservedWork:
    """Pending workflows of one (app, name) on one node that no live worker can run."""

    node: str
    app: str
    name: str
    workflows: int
    oldest: datetime


@dataclass(frozen=True, kw_only=True)
class QueueDepth:
    """A node's pending workflows, as the metrics sample them."""

    runnable: int
    waiting: int
    oldest_seconds: float


@dataclass(frozen=True, kw_only=True)
class WorkerClaims:
    """A live worker's claims on one node since it started, as of its last heartbeat
    (``seen_at``; times in epoch seconds of the database clock)."""

    claimed: int
    seen_at: float
    started_at: float


@dataclass(frozen=True, kw_only=True)
class ConnectionUse:
    """A server's client connections: open now, and allowed (less superuser-reserved)."""

    in_use: int
    allowed: int


@dataclass(frozen=True, kw_only=True)
class FailureGroup:
    """Failed (or dead-lettered) workflows of one node sharing name, error type and step."""

    node: str
    status: str
    name: str
    error_type: str
    step_name: str
    workflows: int
    latest: datetime | None
    example_id: str
    example_key: str | None = None
    # The newest example's error message (its first 300 characters).
    example_message: str | None = None
