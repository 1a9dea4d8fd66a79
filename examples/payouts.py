"""Fan-out: a payout run starts one child workflow per merchant, each with the merchant's own
routing key, so the children spread over every node; the parent sums what they paid. Run
against the demo cluster: `python examples/payouts.py`."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

from shardflow import App, Client, Worker, WorkflowContext, load_config

app = App("examples-payouts")


@app.step
def transfer(merchant: dict) -> int:
    return int(merchant["cents"])


@app.workflow
async def pay_merchant(ctx: WorkflowContext, merchant: dict) -> int:
    return await transfer(merchant)


@app.workflow
async def payout_run(ctx: WorkflowContext, merchants: list) -> int:
    children = [
        await ctx.start_child(pay_merchant, m, routing_key=f"merchant-{m['id']}") for m in merchants
    ]
    return sum(await asyncio.gather(*(child.result() for child in children)))


async def main() -> None:
    config = load_config()
    merchants = [{"id": i, "cents": 100 * i} for i in range(1, 21)]
    async with Worker(app, config), Client(config, app=app) as client:
        handle = await client.start(payout_run, merchants, workflow_id=f"payouts-{uuid.uuid4()}")
        print("paid in total:", await handle.result(timeout=60), "cents")
        nodes = Counter(client.route(f"merchant-{m['id']}")[1] for m in merchants)
        print("children per node:", dict(sorted(nodes.items())))


if __name__ == "__main__":
    asyncio.run(main())
