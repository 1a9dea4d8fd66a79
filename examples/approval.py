"""Human in the loop: an expense waits for a manager's approval (a signal), publishing where
it stands (an event). Run against the demo cluster: `python examples/approval.py`."""

from __future__ import annotations

import asyncio
import uuid

from shardflow import App, Client, SignalTimeout, Worker, WorkflowContext, load_config

app = App("examples-approval")


@app.step
def reimburse(expense: dict) -> str:
    return f"reimbursed {expense['cents']} cents to {expense['employee']}"


@app.workflow
async def expense(ctx: WorkflowContext, expense: dict) -> str:
    await ctx.set_event("stage", "waiting for a manager")
    try:
        decision = await ctx.wait_for_signal("decision", timeout=24 * 3600)
    except SignalTimeout:
        await ctx.set_event("stage", "expired")
        return "expired"
    if not decision["approved"]:
        await ctx.set_event("stage", f"rejected by {decision['by']}")
        return "rejected"
    await ctx.set_event("stage", f"approved by {decision['by']}")
    return await reimburse(expense)


async def main() -> None:
    config = load_config()
    async with Worker(app, config), Client(config, app=app) as client:
        handle = await client.start(
            expense, {"employee": "kim", "cents": 4200}, workflow_id=f"expense-{uuid.uuid4()}"
        )
        print("stage:", await handle.get_event("stage", timeout=30))
        print("status while waiting:", await handle.status(), "(it holds no worker slot)")
        await handle.signal("decision", {"approved": True, "by": "ana"})
        print("result:", await handle.result(timeout=30))
        print("stage:", await handle.get_event("stage"))


if __name__ == "__main__":
    asyncio.run(main())
