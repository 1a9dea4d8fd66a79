"""A steady stream of starts while the cluster changes under it (rebalance tests)."""

from __future__ import annotations

import asyncio
import uuid

from shardflow import Client, ShardflowError
from shardflow.engine.app import WorkflowDef
from tests.helpers import wait_until


class Load:
    """Starts ``workflow`` back to back (input: a counter) until stopped; counts acknowledged
    starts and client-visible errors."""

    def __init__(self, client: Client, workflow: WorkflowDef, *, pace: float = 0.005):
        self.client = client
        self.workflow = workflow
        self.pace = pace
        self.acked: list[tuple[str, int]] = []
        self.errors: list[BaseException] = []
        self._stop = asyncio.Event()
        self._batch = uuid.uuid4().hex[:8]
        self._task: asyncio.Task[None] | None = None

    @property
    def ids(self) -> list[str]:
        return [wf_id for wf_id, _ in self.acked]

    async def __aenter__(self) -> Load:
        self._task = asyncio.create_task(self._run())
        await wait_until(lambda: len(self.acked) >= 20, what="load to start")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task

    async def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            wf_id = f"load-{self._batch}-{i}"
            try:
                await self.client.start(self.workflow, i, workflow_id=wf_id)
                self.acked.append((wf_id, i))
            except ShardflowError as exc:
                self.errors.append(exc)
            i += 1
            await asyncio.sleep(self.pace)  # pace the load (not synchronisation)
