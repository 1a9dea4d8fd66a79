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

from shardflow import Client, ShardflowError, Worker, WorkflowFailed
from shardflow.cluster.local import LocalCluster
from shardflow.cluster.membership import ClusterAdmin
from shardflow.config import ClusterConfig
from tests import apps
from tests.helpers import run, wait_until, worker_command
from tests.invariants import check_invariants
from tests.test_reliability import ids_on, proxied

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("tx_effects_table")]

TX_STEPS = frozenset({"debit"})


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
                    *(
                        client.start(apps.mixed_effects, log_path, workflow_id=w)
                        for w in ids[i : i + 50]
                    )
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
            done.result()
            for w in workers:
                w.terminate()
                await w.wait()
            result = await check_invariants(
                config,
                client,
                ids,
                steps_per_workflow=3,
                effects_log=Path(log_path),
                tx_steps=TX_STEPS,
            )
        report(
            "worker kill -9 churn",
            runs=1,
            workflows=count,
            kills=kills,
            lost=len(result.lost),
            duplicate_records=len(result.bad_histories),
            transactional_effects=result.tx_effects,
            duplicate_transactional_effects=result.tx_duplicates,
            external_duplicate_rate=f"{result.external_duplicate_rate:.3%}",
        )
        result.assert_ok()
        assert result.external_effects - result.external_duplicates == 2 * count
        assert result.tx_effects == count

    run(go(), timeout=290)


async def measure(client: Client, ids: list[str], failures: Counter[str]) -> tuple[float, float]:
    """Start and await W-like workflows, 20 in flight: (p99 seconds, workflows per second)."""
    latencies: list[float] = []

    async def one(wf_id: str) -> None:
        began = time.monotonic()
        try:
            await client.start(apps.three_steps, 1, workflow_id=wf_id)
            await client.result(wf_id, timeout=60)
        except ShardflowError:
            failures[client.route(wf_id)[1]] += 1  # a faulted node may time out
            return
        latencies.append(time.monotonic() - began)

    began = time.monotonic()
    for i in range(0, len(ids), 20):
        await asyncio.gather(*(one(w) for w in ids[i : i + 20]))
    elapsed = time.monotonic() - began
    p99 = statistics.quantiles(latencies, n=100)[98] if len(latencies) > 1 else 0.0
    return p99, len(ids) / elapsed


@pytest.mark.timeout(300)
def test_latency_on_one_node_leaves_the_others_alone(config: ClusterConfig) -> None:
    slow = config.nodes[2].name

    failures: Counter[str] = Counter()

    async def go() -> None:
        async with (
            proxied(config, slow) as (proxy, via_proxy),
            Worker(apps.app, via_proxy),
            Client(via_proxy, app=apps.app) as client,
        ):
            healthy = [n.name for n in config.nodes if n.name != slow]
            baseline_ids = [i for n in healthy for i in ids_on(client, n, 150, "base")]
            base_p99, base_rate = await measure(client, baseline_ids, failures)
            proxy.latency = 0.05  # 50 ms each way on the slow node
            faulted_ids = [i for n in healthy for i in ids_on(client, n, 150, "fault")]
            slow_ids = ids_on(client, slow, 20, "slow")
            slow_task = asyncio.ensure_future(measure(client, slow_ids, failures))
            fault_p99, fault_rate = await measure(client, faulted_ids, failures)
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


class _Load:
    """Starts workflows back to back; remembers the acknowledged ones."""

    def __init__(self, client: Client, log_path: str):
        self.client, self.log_path = client, log_path
        self.acked: list[str] = []
        self.refused = 0
        self.stop = asyncio.Event()

    async def run(self) -> None:
        while not self.stop.is_set():
            wf_id = f"load-{uuid.uuid4().hex}"
            try:
                await self.client.start(apps.effects, self.log_path, workflow_id=wf_id)
                self.acked.append(wf_id)
            except ShardflowError:
                self.refused += 1  # its node is down: not acknowledged, not our promise
            await asyncio.sleep(0.05)  # about 20 starts a second: below capacity


@pytest.mark.timeout(300)
def test_node_killed_under_load_then_restarted(
    config: ClusterConfig, local_cluster: LocalCluster, tmp_path: Path
) -> None:
    log_path = tmp_path / "effects.log"
    victim = config.nodes[1].name
    failures: Counter[str] = Counter()

    async def go() -> None:
        async with Worker(apps.app, config), Client(config, app=apps.app) as client:
            load = _Load(client, str(log_path))
            task = asyncio.ensure_future(load.run())
            await wait_until(lambda: len(load.acked) >= 100, timeout=60, what="load")
            healthy = [n.name for n in config.nodes if n.name != victim]
            base_ids = [i for n in healthy for i in ids_on(client, n, 100, "base")]
            base_p99, _ = await measure(client, base_ids, failures)
            local_cluster.stop_node(local_cluster.node(victim), mode="immediate")
            acked_at_kill = len(load.acked)
            down_ids = [i for n in healthy for i in ids_on(client, n, 100, "down")]
            down_p99, _ = await measure(client, down_ids, failures)
            await wait_until(
                lambda: len(load.acked) >= acked_at_kill + 100,
                timeout=60,
                what="other nodes to keep taking starts",
            )
            local_cluster.start_node(local_cluster.node(victim))
            await wait_until(
                lambda: len(load.acked) >= acked_at_kill + 200,
                timeout=60,
                what="load after the restart",
            )
            load.stop.set()
            await task
            result = await check_invariants(
                config, client, load.acked, steps_per_workflow=3, effects_log=log_path, deadline=120
            )
        report(
            "node kill -9 (immediate stop) under load, restart",
            runs=1,
            workflows=len(load.acked),
            refused_while_down=load.refused,
            healthy_p99_ms=f"{base_p99 * 1000:.0f}->{down_p99 * 1000:.0f}",
            healthy_p99_ratio=f"{down_p99 / base_p99:.2f}",
            lost=len(result.lost),
            duplicate_records=len(result.bad_histories),
            external_duplicate_rate=f"{result.external_duplicate_rate:.3%}",
        )
        result.assert_ok()
        assert sum(n for node, n in failures.items() if node != victim) == 0
        assert down_p99 / base_p99 < 2.0

    try:
        run(go(), timeout=290)
    finally:
        local_cluster.start_all()


@pytest.mark.timeout(300)
def test_all_workers_killed_and_restarted_at_once(
    config: ClusterConfig, config_file: Path, tmp_path: Path
) -> None:
    log_path = tmp_path / "effects.log"
    processes = 8

    async def go() -> None:
        argv, options = worker_command(config_file)

        async def spawn_all() -> list[asyncio.subprocess.Process]:
            return list(
                await asyncio.gather(
                    *(
                        asyncio.create_subprocess_exec(
                            *argv,
                            stdin=asyncio.subprocess.DEVNULL,
                            stderr=asyncio.subprocess.DEVNULL,
                            **options,
                        )
                        for _ in range(processes)
                    )
                )
            )

        async with Client(config, app=apps.app) as client:
            ids = [f"storm-{uuid.uuid4().hex[:8]}-{i}" for i in range(400)]
            for i in range(0, len(ids), 50):
                await asyncio.gather(
                    *(
                        client.start(apps.mixed_effects, str(log_path), workflow_id=w)
                        for w in ids[i : i + 50]
                    )
                )
            workers = await spawn_all()
            await wait_until(
                lambda: log_path.exists() and len(log_path.read_text()) > 0,
                timeout=60,
                what="work to start",
            )
            for w in workers:
                w.kill()
            await asyncio.gather(*(w.wait() for w in workers))
            workers = await spawn_all()  # a connection storm: every worker at once
            peak = 0
            async with ClusterAdmin(config) as admin:
                for _ in range(20):
                    for node in config.nodes:
                        hygiene = await admin.admin(node.name).hygiene()
                        peak = max(peak, hygiene["connections"])
                    await asyncio.sleep(0.1)  # sampling interval, not synchronisation
            result = await check_invariants(
                config,
                client,
                ids,
                steps_per_workflow=3,
                effects_log=log_path,
                tx_steps=TX_STEPS,
                deadline=120,
            )
            for w in workers:
                w.terminate()
            await asyncio.gather(*(w.wait() for w in workers))
        report(
            "all workers kill -9 then restarted at once",
            runs=1,
            workflows=len(ids),
            worker_processes=processes,
            peak_connections_per_node=peak,
            max_connections=200,
            lost=len(result.lost),
            duplicate_records=len(result.bad_histories),
            transactional_effects=result.tx_effects,
            duplicate_transactional_effects=result.tx_duplicates,
            external_duplicate_rate=f"{result.external_duplicate_rate:.3%}",
        )
        result.assert_ok()
        assert result.tx_effects == len(ids)
        assert peak < 200

    run(go(), timeout=290)


@pytest.mark.timeout(300)
def test_long_held_snapshot_during_load(config: ClusterConfig) -> None:
    """A session holds a snapshot open on every node (dead rows cannot be vacuumed) while
    load runs; throughput while it is held and after it is released is reported."""
    import psycopg

    async def burst(client: Client, n: int) -> float:
        began = time.monotonic()
        handles = []
        for i in range(0, n, 50):
            handles += await asyncio.gather(
                *(client.start(apps.three_steps, 1) for _ in range(min(50, n - i)))
            )
        await asyncio.gather(*(h.result(timeout=120) for h in handles))
        return n / (time.monotonic() - began)

    async def go() -> None:
        async with Worker(apps.app, config), Client(config, app=apps.app) as client:
            baseline = statistics.median([await burst(client, 300) for _ in range(2)])
            holders = []
            for node in config.nodes:
                # Test-only: an application transaction left open on a REPEATABLE READ snapshot.
                conn = await psycopg.AsyncConnection.connect(node.dsn)
                await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
                await conn.execute("SELECT count(*) FROM shardflow.workflows")
                holders.append(conn)
            held = [await burst(client, 300) for _ in range(4)]
            for conn in holders:
                await conn.rollback()
                await conn.close()
            after = statistics.median([await burst(client, 300) for _ in range(2)])
            ids = [r.workflow_id for r in (await client.list(limit=50)).items]
            result = await check_invariants(config, client, ids)
        report(
            "snapshot held open on every node during load",
            runs=1,
            workflows=2400,
            baseline_wf_per_s=f"{baseline:.0f}",
            held_wf_per_s="/".join(f"{r:.0f}" for r in held),
            after_release_wf_per_s=f"{after:.0f}",
            held_ratio=f"{min(held) / baseline:.2f}",
            lost=len(result.lost),
        )
        result.assert_ok()
        assert min(held) > 0 and after > 0.5 * baseline

    run(go(), timeout=290)


@pytest.mark.timeout(300)
def test_children_and_sagas_under_worker_kill_churn(
    config: ClusterConfig, config_file: Path, tmp_path: Path
) -> None:
    """Parents fanning out to children on every node (outbox and relay) and sagas that fail
    and compensate, while a worker process is killed every half second: every parent gets
    every child's end once, every saga ends failed with both compensations run, newest
    first; compensation bodies are steps (at least once), their duplicates are counted."""
    parents_count, sagas_count, kills = 20, 20, 0
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
        run_id = uuid.uuid4().hex[:8]
        parents = [f"churn-parent-{run_id}-{i}" for i in range(parents_count)]
        sagas = [f"churn-saga-{run_id}-{i}" for i in range(sagas_count)]
        logs = {s: tmp_path / f"{s}.log" for s in sagas}
        async with Client(config, app=apps.app) as client:
            await client.start_many(
                apps.fan_out, [{"count": 10, "spread": True}] * parents_count, workflow_ids=parents
            )
            await client.start_many(
                apps.trip, [{"log": str(logs[s])} for s in sagas], workflow_ids=sagas
            )
            done = asyncio.ensure_future(
                asyncio.gather(
                    *(client.result(w, timeout=240) for w in parents + sagas),
                    return_exceptions=True,
                )
            )
            while not done.done():
                await asyncio.wait({done}, timeout=0.5)
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
            result = await check_invariants(config, client, parents)
            # (Its `lost` lists the sagas: they end failed, by design. Histories are checked.)
            saga_report = await check_invariants(config, client, sagas)
        sums = outcomes[:parents_count]
        saga_errors = outcomes[parents_count:]
        undo = [
            [line for line in logs[s].read_text().split() if line.startswith("unreserve")]
            for s in sagas
        ]
        first_order = [list(dict.fromkeys(u)) for u in undo]
        duplicates = sum(len(u) - len(set(u)) for u in undo)
        report(
            "children and sagas under kill -9 churn",
            runs=1,
            parents=parents_count,
            children=parents_count * 10,
            sagas=sagas_count,
            kills=kills,
            lost=len(result.lost) + sum(not isinstance(e, WorkflowFailed) for e in saga_errors),
            bad_histories=len(result.bad_histories) + len(saga_report.bad_histories),
            compensation_duplicate_rate=f"{duplicates / (2 * sagas_count):.1%}",
        )
        result.assert_ok()
        assert sums == [sum(range(1, 11))] * parents_count
        assert all(isinstance(e, WorkflowFailed) for e in saga_errors), saga_errors
        assert saga_report.bad_histories == [] and saga_report.problems == []
        assert first_order == [["unreserve-hotel", "unreserve-flight"]] * sagas_count

    run(go(), timeout=290)
