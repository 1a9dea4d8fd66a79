"""shardflow's typed errors.

Above the storage seam nothing raises a psycopg error: callers see these classes, and each
docstring says what the caller should do about it (fix the input, retry, re-route, give up).
"""

from __future__ import annotations


class ShardflowError(Exception):
    """Base class of every error shardflow raises on purpose."""


class ConfigurationError(ShardflowError):
    """The configuration is missing or wrong. Fix the file or environment it names."""


class ClusterNotInitialized(ShardflowError):
    """A node has no shardflow schema or placement yet.

    Run ``shardflow cluster init`` (existing servers) or ``shardflow cluster up`` (local).
    """


class InvalidInput(ShardflowError, ValueError):
    """Input was rejected before anything was written. Fix the value; retrying will not help."""


class InvalidWorkflowId(InvalidInput):
    """A workflow id or routing key is empty, too long, or not storable text."""


class PayloadNotSerializable(InvalidInput):
    """An input or result is not plain JSON (dict with str keys, list, str, number, bool, None)."""


class PayloadTooLarge(InvalidInput):
    """An encoded input or result is above the configured ``max_payload_bytes``."""


class UnknownWorkflow(InvalidInput):
    """No workflow of that name is registered with the application."""


class NotRetryable(InvalidInput):
    """The workflow cannot be retried as it is (its status or its history says why); the
    message names what to do instead (requeue, fork, start anew). Nothing was changed."""


class WorkflowConflict(ShardflowError):
    """The workflow id already exists under another workflow name. Use a different id."""


class ScheduleNotFound(ShardflowError):
    """No schedule of that name exists. `shardflow schedule list` shows them."""


class WorkflowNotFound(ShardflowError):
    """No workflow with this id (and routing key) exists. Check the id and routing key."""


class PartitionMoved(ShardflowError):
    """The node no longer owns the partition (or is moving it).

    Callers refresh the placement (at least ``placement_version``) and retry on the new owner;
    the client does this itself and raises only when the placement does not settle.
    """

    def __init__(self, message: str, *, partition: int, node: str, placement_version: int):
        super().__init__(message)
        self.partition = partition
        self.node = node
        self.placement_version = placement_version


class WrongNode(PartitionMoved):
    """The connection given to ``start(connection=...)`` is not to the node that owns the
    workflow's partition. Open the transaction on ``client.node_for(key).connection()``."""


class NodeUnavailable(ShardflowError):
    """The node that owns the partition cannot be reached now.

    Only that node's partitions are affected: retry later, or check that the node is up.
    """

    def __init__(self, message: str, *, node: str, maybe_committed: bool = False):
        super().__init__(message)
        self.node = node
        # True when the connection failed after a statement was sent: a write may have
        # committed without the caller hearing it (an ambiguous commit).
        self.maybe_committed = maybe_committed


class WriteStalled(ShardflowError):
    """A run's checkpoint or final write got no answer within ``worker.write_timeout_seconds``.

    The worker abandons the run (and stops renewing its lease), so the lease expires and a
    worker resumes the workflow from its durable checkpoints. Nothing for the caller to do;
    if it repeats, look at the node named in the message (locks, I/O, connection limits).
    """

    def __init__(self, message: str, *, node: str, workflow_id: str):
        super().__init__(message)
        self.node = node
        self.workflow_id = workflow_id


class NonDeterminismError(ShardflowError):
    """Replay found a different step than the one recorded at the same position.

    The workflow code changed incompatibly while this workflow was in flight. Deploy code
    that calls the same steps in the same order for in-flight workflows (version the workflow
    under a new name instead).
    """


class StepFailedError(ShardflowError):
    """A step failed on every allowed attempt; raised inside the workflow at the step call.

    The workflow may catch it to compensate; left uncaught, the workflow fails with it.
    """

    def __init__(self, step_name: str, error: dict[str, object]):
        super().__init__(f"step {step_name!r} failed: {error.get('type')}: {error.get('message')}")
        self.step_name = step_name
        self.error = error


class WorkflowTimeout(ShardflowError):
    """The workflow ran past its ``timeout`` and was failed. Raise the timeout or split it up."""


class WorkflowFailed(ShardflowError):
    """Raised by ``result()``: the workflow ended in ``failed``. ``error`` has the record."""

    def __init__(self, workflow_id: str, error: dict[str, object] | None):
        detail = f"{(error or {}).get('type')}: {(error or {}).get('message')}"
        super().__init__(f"workflow {workflow_id!r} failed: {detail}")
        self.workflow_id = workflow_id
        self.error = error or {}


class WorkflowCancelled(ShardflowError):
    """Raised by ``result()``: the workflow was cancelled; it has no result."""


class ResultTimeout(ShardflowError, TimeoutError):
    """``result(timeout=...)`` gave up waiting; the workflow keeps running. Wait again later."""


class SignalTimeout(ShardflowError, TimeoutError):
    """Raised inside a workflow by ``ctx.wait_for_signal(name, timeout=...)``: no signal of
    that name arrived in time. Catch it to take another path (remind, escalate, give up)."""

    def __init__(self, name: str, timeout: float):
        super().__init__(f"no signal {name!r} arrived within {timeout}s")
        self.name = name
        self.timeout = timeout


class SignalRefused(ShardflowError):
    """``signal()`` to a workflow that has already ended: nothing was stored. Only pending and
    running workflows take signals; check the id, or start a new workflow."""


class EventTimeout(ShardflowError, TimeoutError):
    """``get_event(..., timeout=...)``: the workflow did not set that key in time. It may
    still; ask again later (or check the key's spelling with ``shardflow events ID``)."""


class ChildWorkflowFailed(ShardflowError):
    """Raised inside a parent by ``await child.result()``: the child ended ``failed``,
    ``cancelled`` or dead-lettered. ``status`` and ``error`` say how; catch it to carry on
    (or let it fail the parent, which then runs its compensations)."""

    def __init__(self, workflow_id: str, status: str, error: dict[str, object] | None):
        detail = f": {(error or {}).get('type')}: {(error or {}).get('message')}" if error else ""
        super().__init__(f"child workflow {workflow_id!r} ended {status}{detail}")
        self.workflow_id = workflow_id
        self.status = status
        self.error = error or {}
