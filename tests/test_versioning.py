"""Versioning (issue 13): across a deploy, a workflow that recorded the old path keeps it
(ctx.patched() is False where its history has something else) while new runs take the new
one; every workflow records the App version that started it. Both backends.
"""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path

from click.testing import CliRunner

from shardflow import App, Client, Worker, WorkflowContext
from shardflow.cli import cli
from shardflow.config import ClusterConfig
from tests.helpers import run, wait_until

# The same app, deployed twice: version 1, then version 2 with a patched charge.
v1 = App("versioned", version="1")
v2 = App("versioned", version="2")
RAN: Counter[tuple[str, str]] = Counter()


def _reserve(order: str) -> str:
    RAN[order, "reserve"] += 1
    return f"reserved {order}"


def _charge(order: str) -> str:
    RAN[order, "charge"] += 1
    return f"charged {order}"


def _charge_v2(order: str) -> str:
    RAN[order, "charge_v2"] += 1
    return f"charged {order} with v2"


reserve_1 = v1.step(name="reserve")(_reserve)
charge_1 = v1.step(name="charge")(_charge)
reserve_2 = v2.step(name="reserve")(_reserve)
charge_2 = v2.step(name="charge")(_charge)
charge_v2 = v2.step(name="charge_v2")(_charge_v2)


@v1.workflow(name="checkout")
async def checkout_1(ctx: WorkflowContext, order: str) -> list[str]:
    done = [await reserve_1(order), await charge_1(order)]
    await ctx.wait_for_signal("ship")
    return done


@v2.workflow(name="checkout")
async def checkout_2(ctx: WorkflowContext, order: str) -> list[str]:
    done = [await reserve_2(order)]
    if ctx.patched("charge-v2"):
        done.append(await charge_v2(order))
    else:
        done.append(await charge_2(order))
    # Asked again in the same run: the same answer, and no second marker.
    assert ctx.patched("charge-v2") == done[1].endswith("with v2")
    await ctx.wait_for_signal("ship")
    return done


async def _waiting(client: Client, wf_id: str) -> None:
    async def parked() -> bool:
        return (await client.get(wf_id)).waiting_for == "ship"

    await wait_until(parked, what=f"{wf_id} to wait for its signal")


def test_old_and_new_runs_side_by_side_across_a_deploy(
    config: ClusterConfig, config_file: Path
) -> None:
    old, new = (f"vers-{label}-{uuid.uuid4().hex[:8]}" for label in ("old", "new"))

    async def go() -> None:
        async with Client(config, app=v1) as client, Worker(v1, config):
            await client.start(checkout_1, old, workflow_id=old)
            await _waiting(client, old)
        # The deploy: version 2's workers and clients from here on.
        async with Client(config, app=v2) as client, Worker(v2, config):
            await client.start(checkout_2, new, workflow_id=new)
            await _waiting(client, new)
            for wf_id in (old, new):
                await client.signal(wf_id, "ship")
            assert await client.result(old, timeout=30) == [f"reserved {old}", f"charged {old}"]
            assert await client.result(new, timeout=30) == [
                f"reserved {new}",
                f"charged {new} with v2",
            ]
            # The old run replayed its charge (no second charge, no v2 charge).
            assert RAN[old, "charge"] == 1 and RAN[old, "charge_v2"] == 0
            assert RAN[new, "charge"] == 0 and RAN[new, "charge_v2"] == 1
            assert [s.step_name for s in await client.steps(new)][:3] == [
                "reserve",
                "shardflow.patch:charge-v2",
                "charge_v2",
            ]
            assert "shardflow.patch:charge-v2" not in {s.step_name for s in await client.steps(old)}
            for version, expected, other in (("1", old, new), ("2", new, old)):
                listed = {
                    r.workflow_id for r in (await client.list(version=version, limit=1000)).items
                }
                assert expected in listed and other not in listed
            assert (await client.get(old)).app_version == "1"

    run(go())
    shown = CliRunner().invoke(cli, ["--config", str(config_file), "list", "--version", "1"])
    assert shown.exit_code == 0, shown.output
    assert f"{old}\tcheckout\tversioned\tsucceeded" in shown.output
    assert "\tversion 1" in shown.output and new not in shown.output
