"""Long fault scenarios (opt-in: `make chaos`). Each prints one row of the results table:
scenario, runs, workflows, lost, duplicate records, external duplicate rate, p99 ratio."""

from __future__ import annotations

import asyncio
import random
import statistics
import time
import uuid
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from shardflow import Client, ShardflowError, Worker
from shardflow.config import ClusterConfig
from tests import apps
from tests.helpers import run, worker_command
from tests.test_reliability import ids_on, proxied

pytestmark = pytest.mark.slow


def report(scenario: str, **values: object) -> None:
    cells = "  ".join(f"{k}={v}" for k, v in values.items())
    print(f"\nCHAOS {scenario}: {cells}")


@pytest.mark.timeout(300)
def test_random_worker_kills_under_load(
    config: ClusterConfig, config_file: Path, tmp_path: Path
) -> None:
    log_path = str(tmp_path / "effects.log")
    count, kills = 600, 0

    # Random kills also hit innocent workflows, and each kill counts against whatever was
    # running: allow many expiries so this scenario measures loss, not dead-lettering.
    churn_config = tmp_path / "churn.toml"
    churn_config.write_text(
        config.replace(worker=replace(config.worker, max_lease_expiries=1000)).to_toml()
    )

    async def go() -> None:
        nonlocal kills
        argv, options = worker_command(churn_config)

        async def spawn() -> asyncio.subprocess.Process:
            return await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                **options,
            )

        workers = [await spawn() for _ in range(3)]
        async with Client(config, app=apps.app) as client:
            ids = [f"churn-{uuid.uuid4().hex[:8]}-{i}" for i in range(count)]
            for i in range(0, count, 50):
                await asyncio.gather(
                    *(client.start(apps.effects, log_path, workflow_id=w) for w in ids[i : i + 50])
                )
            done = asyncio.ensure_future(
                asyncio.gather(
                    *(client.result(w, timeout=240) for w in ids), return_exceptions=True
                )
            )
            while not done.done():
                await asyncio.wait({done}, timeout=0.5)  # a kill every half second
                if done.done():
                    break
                victim = random.randrange(len(workers))
                workers[victim].kill()
                await workers[victim].wait()
                kills += 1
                workers[victim] = await spawn()
            outcomes = done.result()
            for w in workers:
                w.terminate()
                await w.wait()
            lost = sum(1 for o in outcomes if o != 3)
            histories = await asyncio.gather(*(client.steps(w) for w in ids))
            bad_history = sum(1 for h in histories if [s.step_seq for s in h] != [0, 1, 2])
        lines = Counter(Path(log_path).read_text().split())
        effects = sum(lines.values())
        report(
            "worker-kill-9 churn",
            runs=1,
            workflows=count,
            kills=kills,
            lost=lost,
            duplicate_records=bad_history,
            external_duplicate_rate=f"{(effects - len(lines)) / len(lines):.3%}",
        )
        assert lost == 0 and bad_history == 0
        assert len(lines) == 3 * count

    run(go(), timeout=290)


@pytest.mark.timeout(300)
def test_latency_on_one_node_leaves_the_others_alone(config: ClusterConfig) -> None:
    slow = config.nodes[2].name

    failures: Counter[str] = Counter()

    async def measure(client: Client, ids: list[str]) -> tuple[float, float]:
        latencies: list[float] = []

        async def one(wf_id: str) -> None:
            began = time.monotonic()
            try:
                await client.start(apps.three_steps, 1, workflow_id=wf_id)
                await client.result(wf_id, timeout=60)
            except ShardflowError:
                failures[client.route(wf_id)[1]] += 1  # the slow node may time out
                return
            latencies.append(time.monotonic() - began)

        began = time.monotonic()
        for i in range(0, len(ids), 20):  # 20 in flight at a time
            await asyncio.gather(*(one(w) for w in ids[i : i + 20]))
        elapsed = time.monotonic() - began
        p99 = statistics.quantiles(latencies, n=100)[98] if len(latencies) > 1 else 0.0
        return p99, len(ids) / elapsed

    async def go() -> None:
        async with (
            proxied(config, slow) as (proxy, via_proxy),
            Worker(apps.app, via_proxy),
            Client(via_proxy, app=apps.app) as client,
        ):
            healthy = [n.name for n in config.nodes if n.name != slow]
            baseline_ids = [i for n in healthy for i in ids_on(client, n, 150, "base")]
            base_p99, base_rate = await measure(client, baseline_ids)
            proxy.latency = 0.05  # 50 ms each way on the slow node
            faulted_ids = [i for n in healthy for i in ids_on(client, n, 150, "fault")]
            slow_ids = ids_on(client, slow, 20, "slow")
            slow_task = asyncio.ensure_future(measure(client, slow_ids))
            fault_p99, fault_rate = await measure(client, faulted_ids)
            slow_p99, _ = await slow_task
            proxy.heal()
        ratio = fault_p99 / base_p99
        report(
            "50ms latency each way on one node",
            runs=1,
            workflows=620,
            lost=0,
            healthy_p99_ms=f"{base_p99 * 1000:.0f}->{fault_p99 * 1000:.0f}",
            healthy_p99_ratio=f"{ratio:.2f}",
            healthy_throughput_ratio=f"{fault_rate / base_rate:.2f}",
            slow_node_p99_ms=f"{slow_p99 * 1000:.0f}",
            slow_node_call_failures=failures[slow],
        )
        assert ratio < 2.0
        assert sum(n for node, n in failures.items() if node != slow) == 0

    run(go(), timeout=290)
