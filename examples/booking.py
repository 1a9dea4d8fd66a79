"""A booking saga: reserve a flight and a hotel, registering the undo of each; the payment
is declined, so the reservations are released in reverse order before the booking fails.
Run against the demo cluster: `python examples/booking.py`."""

from __future__ import annotations

import asyncio
import uuid

from shardflow import App, Client, Worker, WorkflowContext, WorkflowFailed, load_config

app = App("examples-booking")


@app.step
def reserve(thing: str) -> str:
    return f"{thing} reserved"


@app.step
def release(thing: str) -> str:
    return f"{thing} released"


@app.step(retries=2, backoff=0.1)
def charge(cents: int) -> str:
    raise RuntimeError(f"card declined for {cents} cents")


@app.workflow
async def book_trip(ctx: WorkflowContext, trip: dict) -> str:
    for thing in ("flight", "hotel"):
        await reserve(thing)
        ctx.compensate(release, thing)
    await charge(trip["cents"])
    return "booked"


async def main() -> None:
    config = load_config()
    async with Worker(app, config), Client(config, app=app) as client:
        handle = await client.start(book_trip, {"cents": 90000}, workflow_id=f"trip-{uuid.uuid4()}")
        try:
            await handle.result(timeout=30)
        except WorkflowFailed as failed:
            print("failed:", failed.error["message"])
            print("compensations run:", failed.error["compensations"])
        for step in await client.steps(handle.workflow_id):
            print(f"  {step.step_seq}: {step.step_name} -> {step.output or step.status}")


if __name__ == "__main__":
    asyncio.run(main())
