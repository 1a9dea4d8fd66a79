"""The demo application: an order workflow with several steps, a retry and a durable sleep.

``shardflow demo`` starts it a few hundred times across the cluster; run a worker for it
yourself with ``shardflow worker --app shardflow.demo:app``.
"""

from __future__ import annotations

from typing import Any

from shardflow import App, WorkflowContext, current_step

app = App("demo")


class FlakyWarehouse(Exception):
    """A transient failure, to show retries with backoff."""


@app.step(retries=3, backoff=0.05)
def reserve_stock(order: dict[str, Any]) -> dict[str, Any]:
    step = current_step()
    # Every fifth order hits a flaky warehouse once: the retry is durable and backs off.
    if order["n"] % 5 == 0 and step is not None and step.attempt == 1:
        raise FlakyWarehouse(f"warehouse busy for order {order['n']}")
    return {"sku": order["sku"], "reserved": order["quantity"]}


@app.step
async def charge_card(order: dict[str, Any]) -> dict[str, Any]:
    step = current_step()
    # A payment provider would receive this key and refuse to charge twice.
    key = step.idempotency_key if step else "direct-call"
    return {"amount": order["quantity"] * 250, "idempotency_key": key}


@app.step
def ship(order: dict[str, Any], charge: dict[str, Any]) -> str:
    return (
        f"order {order['n']}: shipped {order['quantity']} x {order['sku']} for {charge['amount']}"
    )


@app.workflow(timeout=300)
async def process_order(ctx: WorkflowContext, order: dict[str, Any]) -> dict[str, Any]:
    reservation = await reserve_stock(order)
    await ctx.sleep(order.get("cooling_off_seconds", 0.2))  # durable: survives restarts
    charge = await charge_card(order)
    receipt = await ship(order, charge)
    return {"reservation": reservation, "charge": charge, "receipt": receipt}
