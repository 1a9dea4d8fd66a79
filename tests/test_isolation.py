"""Isolation between apps, and starts that the workflow's function could not run.

Issue 9: a worker of app `shop` claimed and ran the demo app's workflows because both define
`process_order`. Workflows now carry their app; a worker claims only its app's workflows and
only names its code defines; anything else stays pending, untouched and visible.
"""

from __future__ import annotations

import uuid

import pytest

from shardflow import App, Client, InvalidInput, Worker, WorkflowConflict, WorkflowContext
from shardflow.cluster.admin import cluster_status
from shardflow.config import ClusterConfig
from shardflow.errors import WorkflowNotFound
from tests.helpers import run, wait_until


def _shop_app(name: str, *, with_refund: bool = False) -> App:
    """An app whose process_order returns which app ran it."""
    app = App(name)

    @app.workflow(name="process_order")
    async def process_order(ctx: WorkflowContext, order: dict[str, int]) -> str:
        return f"{name}:{order['n']}"

    if with_refund:

        @app.workflow(name="refund")
        async def refund(ctx: WorkflowContext) -> str:
            return "refunded"

    return app


def test_a_worker_runs_only_its_own_apps_workflows(config: ClusterConfig) -> None:
    suffix = uuid.uuid4().hex[:8]
    shop, demo = _shop_app(f"shop-{suffix}"), _shop_app(f"demo-{suffix}")

    async def go() -> None:
        shop_id, demo_id = f"iso-shop-{suffix}", f"iso-demo-{suffix}"
        async with Client(config, app=shop) as shop_client, Client(config, app=demo) as demo_client:
            await shop_client.start("process_order", {"n": 1}, workflow_id=shop_id)
            await demo_client.start("process_order", {"n": 2}, workflow_id=demo_id)
            # The same id under another app is a conflict, not the same workflow.
            with pytest.raises(WorkflowConflict, match="of app"):
                await demo_client.start("process_order", {"n": 1}, workflow_id=shop_id)

            async with Worker(shop, config):
                assert await shop_client.result(shop_id, timeout=20) == f"{shop.name}:1"
                # The demo workflow of the same name is left alone, and status says why.
                record = await demo_client.get(demo_id)
                assert (record.status, record.claim_count, record.app) == ("pending", 0, demo.name)

                async def shows_waiting() -> bool:
                    status = await cluster_status(config)
                    return any(u.app == demo.name for u in status.unserved)

                await wait_until(shows_waiting, timeout=15, what="status to list the demo work")
                status = await cluster_status(config)
                assert not any(u.app == shop.name for u in status.unserved)

            async with Worker(demo, config):
                assert await demo_client.result(demo_id, timeout=20) == f"{demo.name}:2"

    run(go(), timeout=60)


def test_a_name_the_workers_code_lacks_stays_pending_and_visible(config: ClusterConfig) -> None:
    name = f"rolling-{uuid.uuid4().hex[:8]}"
    old_code, new_code = _shop_app(name), _shop_app(name, with_refund=True)

    async def go() -> None:
        wf_id = f"iso-refund-{uuid.uuid4().hex}"
        async with Client(config, app=new_code) as client:
            await client.start("refund", workflow_id=wf_id)
            async with Worker(old_code, config):

                async def listed() -> bool:
                    status = await cluster_status(config)
                    return any(u.app == name and u.name == "refund" for u in status.unserved)

                await wait_until(listed, timeout=15, what="status to list the unknown name")
                order = await client.start("process_order", {"n": 7})
                assert await order.result(timeout=20) == f"{name}:7"
                # The old worker ran its own work but never claimed the name it lacks.
                record = await client.get(wf_id)
                assert (record.status, record.claim_count) == ("pending", 0)
            async with Worker(new_code, config):
                assert await client.result(wf_id, timeout=20) == "refunded"

    run(go(), timeout=60)


def test_a_start_the_function_cannot_take_is_refused_before_writing(
    config: ClusterConfig,
) -> None:
    app = App(f"inputs-{uuid.uuid4().hex[:8]}")

    @app.workflow
    async def needs_order(ctx: WorkflowContext, order: dict[str, int]) -> int:
        return order["n"]

    @app.workflow
    async def optional(ctx: WorkflowContext, order: dict[str, int] | None = None) -> int:
        return 0 if order is None else order["n"]

    @app.workflow
    async def takes_nothing(ctx: WorkflowContext) -> int:
        return 1

    async def go() -> None:
        async with Client(config, app=app) as client:
            refused = f"inputs-{uuid.uuid4().hex}"
            with pytest.raises(InvalidInput, match="needs an input"):
                await client.start(needs_order, workflow_id=refused)
            with pytest.raises(InvalidInput, match="takes no input"):
                await client.start(takes_nothing, {"n": 1}, workflow_id=refused)
            with pytest.raises(InvalidInput, match="needs an input"):
                await client.start_many(needs_order, [{"n": 1}, None])
            with pytest.raises(WorkflowNotFound):
                await client.get(refused)
            async with Worker(app, config):
                assert await (await client.start(optional)).result(timeout=20) == 0
                assert await (await client.start(needs_order, {"n": 5})).result(timeout=20) == 5

    run(go(), timeout=60)
