"""What a start records for flow control: the workflow's queue, and the caller's priority
and concurrency key (checked before anything is written)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shardflow.engine.codec import check_identifier
from shardflow.errors import InvalidInput

if TYPE_CHECKING:
    from shardflow.engine.app import WorkflowDef

# The column is a PostgreSQL integer.
PRIORITY_RANGE = (-(2**31), 2**31 - 1)

# A start of a workflow in no queue.
NO_QUEUE: dict[str, Any] = {"queue": None, "priority": 0, "concurrency_key": None}


def queue_fields(
    definition: WorkflowDef, *, priority: int, concurrency_key: str | None, max_id_length: int
) -> dict[str, Any]:
    """The queue, priority and concurrency_key columns of a start of ``definition``;
    InvalidInput for a priority or key the start cannot use."""
    if definition.queue is None:
        if priority != 0 or concurrency_key is not None:
            raise InvalidInput(
                f"workflow {definition.name!r} is in no queue, so priority and concurrency_key "
                "have no meaning for it: declare a queue with app.queue(...) and register the "
                "workflow with @app.workflow(queue=...), or start it without them"
            )
        return NO_QUEUE
    low, high = PRIORITY_RANGE
    if isinstance(priority, bool) or not isinstance(priority, int) or not low <= priority <= high:
        raise InvalidInput(
            f"priority must be a whole number from {low} to {high} (smaller is admitted "
            f"first; 0 by default), got {priority!r}"
        )
    if concurrency_key is not None:
        check_identifier(
            concurrency_key,
            what="concurrency_key",
            max_length=max_id_length,
            error=InvalidInput,
        )
    return {"queue": definition.queue, "priority": priority, "concurrency_key": concurrency_key}
