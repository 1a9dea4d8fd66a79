"""The relay's queries on one node: its outbox, and ended children whose parent was not told.

Reads scan the node (on Citus, the node's partitions); every write names one partition.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shardflow.storage.connector import NodeConnector


@dataclass(frozen=True, kw_only=True)
class OutboxMessage:
    """A message from a workflow on ``partition`` to another partition."""

    partition: int
    message_id: str
    kind: str
    body: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class EndedChild:
    """A child workflow that ended; its parent has not been told yet."""

    partition: int
    workflow_id: str
    parent_id: str
    parent_key: str
    status: str
    output: Any = None
    error: dict[str, Any] | None = None


class RelayStore:
    """``partitions()``: on Citus, the partitions this node holds now (plain: [] = all)."""

    def __init__(self, connector: NodeConnector, partitions: Callable[[], list[int]]):
        self.db = connector
        self._partitions = partitions

    @property
    def node(self) -> str:
        return self.db.name

    async def pending_messages(self, *, limit: int) -> list[OutboxMessage]:
        rows = await self.db.run(
            "outbox_pending", {"partitions": self._partitions(), "limit": limit}
        )
        return [OutboxMessage(**r) for r in rows]

    async def delete_message(self, message: OutboxMessage) -> None:
        await self.db.run(
            "outbox_delete",
            {"partition": message.partition, "message_id": message.message_id},
        )

    async def untold_children(self, *, limit: int) -> list[EndedChild]:
        rows = await self.db.run(
            "children_untold", {"partitions": self._partitions(), "limit": limit}
        )
        return [EndedChild(**r) for r in rows]

    async def mark_told(self, child: EndedChild) -> None:
        await self.db.run(
            "child_told", {"partition": child.partition, "workflow_id": child.workflow_id}
        )
