"""A thin synchronous facade over the async Client, for scripts, the CLI and Locust.

It runs one event loop in a background thread and forwards every call to the async client:
there is no second copy of the logic.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

from shardflow.client import Client
from shardflow.config import ClusterConfig
from shardflow.engine.app import App, WorkflowDef
from shardflow.listing import WorkflowPage
from shardflow.storage.records import StepRecord, WorkflowRecord

T = TypeVar("T")


class SyncClient:
    """``with SyncClient(config, app=app) as client: client.start(...).result()``"""

    def __init__(self, config: ClusterConfig, *, app: App | None = None):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, daemon=True, name="shardflow-sync-client"
        )
        self._thread.start()
        self._client = Client(config, app=app)
        try:
            self._call(self._client.connect())
        except BaseException:
            self.close()
            raise

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        if self._loop.is_running():
            self._call(self._client.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def client(self) -> Client:
        return self._client

    def start(
        self,
        workflow: WorkflowDef | str,
        input: Any = None,
        *,
        workflow_id: str | None = None,
        routing_key: str | None = None,
        priority: int = 0,
        concurrency_key: str | None = None,
    ) -> SyncWorkflowHandle:
        handle = self._call(
            self._client.start(
                workflow,
                input,
                workflow_id=workflow_id,
                routing_key=routing_key,
                priority=priority,
                concurrency_key=concurrency_key,
            )
        )
        return SyncWorkflowHandle(self, handle.workflow_id, handle.routing_key, handle.created)

    def get(self, workflow_id: str, *, routing_key: str | None = None) -> WorkflowRecord:
        return self._call(self._client.get(workflow_id, routing_key=routing_key))

    def status(self, workflow_id: str, *, routing_key: str | None = None) -> str:
        return self._call(self._client.status(workflow_id, routing_key=routing_key))

    def steps(self, workflow_id: str, *, routing_key: str | None = None) -> list[StepRecord]:
        return self._call(self._client.steps(workflow_id, routing_key=routing_key))

    def result(
        self, workflow_id: str, *, routing_key: str | None = None, timeout: float | None = None
    ) -> Any:
        return self._call(
            self._client.result(workflow_id, routing_key=routing_key, timeout=timeout)
        )

    def cancel(self, workflow_id: str, *, routing_key: str | None = None) -> bool:
        return self._call(self._client.cancel(workflow_id, routing_key=routing_key))

    def signal(
        self,
        workflow_id: str,
        name: str,
        payload: Any = None,
        *,
        signal_id: str | None = None,
        routing_key: str | None = None,
    ) -> bool:
        return self._call(
            self._client.signal(
                workflow_id, name, payload, signal_id=signal_id, routing_key=routing_key
            )
        )

    def get_event(
        self, workflow_id: str, key: str, *, timeout: float = 0, routing_key: str | None = None
    ) -> Any:
        return self._call(
            self._client.get_event(workflow_id, key, timeout=timeout, routing_key=routing_key)
        )

    def events(self, workflow_id: str, *, routing_key: str | None = None) -> dict[str, Any]:
        return self._call(self._client.events(workflow_id, routing_key=routing_key))

    def list(
        self,
        *,
        status: str | None = None,
        name: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> WorkflowPage:
        return self._call(self._client.list(status=status, name=name, limit=limit, cursor=cursor))


class SyncWorkflowHandle:
    """The synchronous twin of WorkflowHandle (it forwards to the SyncClient)."""

    def __init__(
        self,
        client: SyncClient,
        workflow_id: str,
        routing_key: str | None,
        created: bool | None,
    ):
        self.client = client
        self.workflow_id = workflow_id
        self.routing_key = routing_key
        self.created = created

    def result(self, timeout: float | None = None) -> Any:
        return self.client.result(self.workflow_id, routing_key=self.routing_key, timeout=timeout)

    def status(self) -> str:
        return self.client.status(self.workflow_id, routing_key=self.routing_key)

    def cancel(self) -> bool:
        return self.client.cancel(self.workflow_id, routing_key=self.routing_key)

    def signal(self, name: str, payload: Any = None, *, signal_id: str | None = None) -> bool:
        return self.client.signal(
            self.workflow_id, name, payload, signal_id=signal_id, routing_key=self.routing_key
        )

    def get_event(self, key: str, *, timeout: float = 0) -> Any:
        return self.client.get_event(
            self.workflow_id, key, timeout=timeout, routing_key=self.routing_key
        )
