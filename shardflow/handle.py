"""``WorkflowHandle``: what a start returns; every call goes through its client."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shardflow.storage.records import WorkflowRecord

if TYPE_CHECKING:
    from shardflow.client import Client


class WorkflowHandle:
    """A started workflow: wait for its result, read its status and events, signal or cancel
    it.

    ``created`` is True when this call created the workflow, False when the id already
    existed, and None when the answer was lost (connection dropped after the commit) and the
    workflow was found by looking it up.
    """

    def __init__(
        self, client: Client, workflow_id: str, routing_key: str | None, *, created: bool | None
    ):
        self.client = client
        self.workflow_id = workflow_id
        self.routing_key = routing_key
        self.created = created

    def __repr__(self) -> str:
        return f"WorkflowHandle({self.workflow_id!r}, created={self.created})"

    async def result(self, timeout: float | None = None) -> Any:
        return await self.client.result(
            self.workflow_id, routing_key=self.routing_key, timeout=timeout
        )

    async def status(self) -> str:
        return await self.client.status(self.workflow_id, routing_key=self.routing_key)

    async def get(self) -> WorkflowRecord:
        return await self.client.get(self.workflow_id, routing_key=self.routing_key)

    async def cancel(self) -> bool:
        return await self.client.cancel(self.workflow_id, routing_key=self.routing_key)

    async def signal(self, name: str, payload: Any = None, *, signal_id: str | None = None) -> bool:
        return await self.client.signal(
            self.workflow_id, name, payload, signal_id=signal_id, routing_key=self.routing_key
        )

    async def get_event(self, key: str, *, timeout: float = 0) -> Any:
        return await self.client.get_event(
            self.workflow_id, key, timeout=timeout, routing_key=self.routing_key
        )
