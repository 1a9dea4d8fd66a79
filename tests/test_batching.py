"""Group commit: bulk starts, concurrent starts sharing a statement, and the write batcher."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Hashable

import pytest

from shardflow import Client, InvalidInput, Worker, WorkflowConflict, WorkflowNotFound
from shardflow.config import ClusterConfig
from shardflow.storage.batcher import WriteBatcher
from tests import apps
from tests.helpers import run


def test_start_many_starts_each_once_and_is_idempotent(config: ClusterConfig) -> None:
    async def go() -> None:
        ids = [f"many-{uuid.uuid4().hex}" for _ in range(300)]
        async with Client(config, app=apps.app) as client:
            handles = await client.start_many(apps.three_steps, list(range(300)), workflow_ids=ids)
            assert [h.workflow_id for h in handles] == ids
            assert all(h.created for h in handles)
            # Every node got its share, in one statement each.
            assert {client.route(i)[1] for i in ids} == {n.name for n in client.placement.nodes}
            extra = f"many-{uuid.uuid4().hex}"
            again = await client.start_many(apps.three_steps, [0, 0], workflow_ids=[ids[0], extra])
            assert [h.created for h in again] == [False, True]
            async with Worker(apps.app, config):
                results = await asyncio.gather(*(client.result(i, timeout=60) for i in ids))
            assert results == [n + 3 for n in range(300)]

    run(go(), timeout=90)


def test_start_many_refuses_bad_input_before_writing(config: ClusterConfig) -> None:
    async def go() -> None:
        good = [f"many-bad-{uuid.uuid4().hex}" for _ in range(3)]
        async with Client(config, app=apps.app) as client:
            with pytest.raises(InvalidInput):
                await client.start_many(apps.echo, [1, 2, 3], workflow_ids=[*good[:2], "a\x00b"])
            with pytest.raises(InvalidInput, match="twice"):
                await client.start_many(apps.echo, [1, 2], workflow_ids=[good[0], good[0]])
            with pytest.raises(InvalidInput, match="one id per input"):
                await client.start_many(apps.echo, [1, 2], workflow_ids=[good[0]])
            with pytest.raises(InvalidInput):
                await client.start_many(apps.echo, [1, {1, 2}], workflow_ids=good[:2])
            for wf_id in good:
                with pytest.raises(WorkflowNotFound):
                    await client.get(wf_id)

    run(go())


def test_start_many_reports_an_id_taken_by_another_workflow(config: ClusterConfig) -> None:
    async def go() -> None:
        taken = f"many-taken-{uuid.uuid4().hex}"
        async with Client(config, app=apps.app) as client:
            await client.start(apps.no_input, workflow_id=taken)
            with pytest.raises(WorkflowConflict):
                await client.start_many(apps.echo, [1], workflow_ids=[taken])

    run(go())


def test_concurrent_starts_share_statements(config: ClusterConfig) -> None:
    async def go() -> None:
        ids = [f"burst-{uuid.uuid4().hex}" for _ in range(300)]
        async with Client(config, app=apps.app) as client:
            handles = await asyncio.gather(
                *(client.start(apps.echo, i, workflow_id=w) for i, w in enumerate(ids))
            )
            assert all(h.created for h in handles)
            statements = sum(b.batches for b in client._start_batchers.values())
            assert statements < len(ids) / 3, f"{statements} statements for {len(ids)} starts"
            records = await asyncio.gather(*(client.get(w) for w in ids))
            assert [r.input for r in records] == list(range(300))

    run(go())


def test_batcher_gives_each_caller_its_own_answer() -> None:
    async def go() -> None:
        flushed: list[list[int]] = []

        async def flush(items: list[int]) -> set[Hashable]:
            flushed.append(items)
            await asyncio.sleep(0)  # a real flush yields to the loop while the node answers
            if 13 in items:
                raise RuntimeError("node lost")
            return {i for i in items if i % 2 == 0}  # odd rows were refused by their guard

        batcher: WriteBatcher[int] = WriteBatcher(flush, keys=lambda i: (i,), max_in_flight=1)
        answers = await asyncio.gather(
            *(batcher.submit(i) for i in range(10)), return_exceptions=True
        )
        assert answers == [i % 2 == 0 for i in range(10)]
        assert len(flushed) < 10  # submitted together, written together
        failing = await asyncio.gather(
            batcher.submit(12), batcher.submit(13), return_exceptions=True
        )
        assert all(isinstance(a, RuntimeError) for a in failing)

    run(go())
