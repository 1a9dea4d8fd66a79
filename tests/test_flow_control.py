"""Flow control (issue 13): named queues with a concurrency limit, a per-key limit, a rate
limit and priority, on both backends; the concurrency limit holds while a worker is killed
-9. The admission choice is also tested alone (Hypothesis), without a database.

Every run's interval comes from the log its step writes (start and end, with the process);
a run killed with its worker ends when the kill was sent. "At most n at once" is then the
largest overlap of those intervals.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardflow import App, Client, InvalidInput, Worker
from shardflow.config import ClusterConfig
from shardflow.errors import ConfigurationError
from shardflow.queues.admission import Usage, Waiting, choose, room, saturated_keys
from shardflow.queues.queue import Queue
from tests import apps
from tests.helpers import run, spawn_worker, wait_until, workflow_exists

FLOW_APP = "tests.apps:flow_app"

# -- the admission choice, without a database ----------------------------------------------

waiting_lists = st.lists(
    st.builds(
        Waiting,
        partition=st.integers(0, 3),
        workflow_id=st.uuids().map(str),
        concurrency_key=st.one_of(st.none(), st.sampled_from("abc")),
    ),
    max_size=30,
)
limits = st.one_of(st.none(), st.integers(1, 6))


@given(
    waiting=waiting_lists,
    concurrency=limits,
    per_key=limits,
    rate=limits,
    held=st.dictionaries(st.one_of(st.none(), st.sampled_from("abcd")), st.integers(0, 6)),
    admitted=st.integers(0, 8),
    slots=st.integers(0, 10),
)
def test_an_admission_never_exceeds_a_limit_and_takes_all_it_may(
    waiting: list[Waiting],
    concurrency: int | None,
    per_key: int | None,
    rate: int | None,
    held: dict[str | None, int],
    admitted: int,
    slots: int,
) -> None:
    queue = Queue(
        name="q",
        app="a",
        concurrency=concurrency,
        per_key=per_key,
        rate=rate,
        period_seconds=1.0 if rate else None,
    )
    usage = Usage(held_by_key=held, admitted_in_window=admitted)
    chosen = choose(queue, usage, waiting, slots)
    # Never past the worker's slots, the queue's free slots or its rate window.
    assert len(chosen) <= slots
    if concurrency is not None:
        assert usage.held + len(chosen) <= max(concurrency, usage.held)
    if rate is not None:
        assert admitted + len(chosen) <= max(rate, admitted)
    # Never past a key's limit.
    taken = Counter(w.concurrency_key for w in chosen if w.concurrency_key is not None)
    if per_key is not None:
        for key, count in taken.items():
            assert held.get(key, 0) + count <= max(per_key, held.get(key, 0))
    # In admission order, and greedy: a workflow passed over had a full key, or room ran out.
    positions = [waiting.index(w) for w in chosen]
    assert positions == sorted(positions)
    left = room(queue, usage, slots)
    for work in waiting:
        if work in chosen or len(chosen) >= left:
            continue
        assert per_key is not None and work.concurrency_key is not None
        assert held.get(work.concurrency_key, 0) + taken[work.concurrency_key] >= per_key
    # The read of waiting workflows leaves out only keys that cannot take one more.
    for key in saturated_keys(queue, usage):
        assert per_key is not None and held[key] >= per_key


def test_queue_declarations_are_checked() -> None:
    app = App("flow-checks")
    for bad in (
        {"concurrency": 0},
        {"per_key": -1},
        {"concurrency": 1.5},
        {"rate": (0, "1s")},
        {"rate": (5, "soon")},
        {"rate": (5, 0)},
        {"rate": 5},
    ):
        with pytest.raises(ConfigurationError, match="queue 'q'"):
            app.queue("q", **bad)
    with pytest.raises(ConfigurationError, match="invalid queue name"):
        app.queue("no spaces")
    app.queue("q", rate=(10, "1m"))
    with pytest.raises(ConfigurationError, match="declared twice"):
        app.queue("q")
    with pytest.raises(ConfigurationError, match="no queue named 'other'"):

        @app.workflow(queue="other")
        async def lost(ctx: Any) -> None: ...


def test_priority_and_key_need_a_queue_and_nothing_is_written(config: ClusterConfig) -> None:
    async def go() -> None:
        async with Client(config, app=apps.flow_app) as client:
            for bad in ({"priority": 1}, {"concurrency_key": "k"}):
                with pytest.raises(InvalidInput, match="in no queue"):
                    await client.start(apps.app.get_workflow("echo"), 1, **bad)
            wf_id = f"flow-bad-{uuid.uuid4()}"
            bad_starts: list[dict[str, Any]] = [
                {"priority": 2**40},
                {"priority": "high"},
                {"concurrency_key": ""},
            ]
            for bad in bad_starts:
                with pytest.raises(InvalidInput):
                    await client.start(apps.paced_work, workflow_id=wf_id, **bad)
            assert not await workflow_exists(client, wf_id)

    run(go())


def test_a_rate_window_longer_than_the_retention_is_refused(config: ClusterConfig) -> None:
    app = App("flow-retention")
    app.queue("slow", rate=(1, "1h"))

    @app.workflow(queue="slow", retention="1m")
    async def short_lived(ctx: Any) -> None: ...

    with pytest.raises(ConfigurationError, match="rate window"):
        Worker(app, config)


# -- limits on the cluster -------------------------------------------------------------------


def _intervals(log: Path, *, killed: int | None = None) -> list[Any]:
    """(start, end, workflow_id, killed) of every run in the log. A run of the killed
    process has no end: its workflow holds its slot until another worker resumes it, so it
    ends when the workflow's next run starts."""
    starts: dict[tuple[str, int], float] = {}
    runs = []
    for line in log.read_text().splitlines():
        kind, wf_id, process, at = line.split()
        if kind == "start":
            starts[(wf_id, int(process))] = float(at)
        else:
            runs.append((starts.pop((wf_id, int(process))), float(at), wf_id, False))
    cut = []
    for (wf_id, pid), started in starts.items():
        assert pid == killed, f"run of {wf_id} in process {pid} never ended"
        resumed = min(r[0] for r in runs if r[2] == wf_id and r[0] > started)
        cut.append((started, resumed, wf_id, True))
    return runs + cut


def _most_at_once(runs: list[Any]) -> int:
    edges = sorted([(r[0], 1) for r in runs] + [(r[1], -1) for r in runs])
    most = now = 0
    for _, step in edges:  # an end sorts before a start at the same instant
        now += step
        most = max(most, now)
    return most


@pytest.mark.timeout(180)
def test_the_concurrency_limit_holds_while_a_worker_is_killed(
    config: ClusterConfig, config_file: Path, tmp_path: Path
) -> None:
    """Queue "limited" (2 per node), 10 workflows on one node, two worker processes with 32
    slots each; the one running some of them is killed -9 mid-step. Its runs hold their
    slots until the other worker resumes them (after their leases expire): never more than
    2 at once, counting a killed run until its workflow runs again."""
    log = tmp_path / "runs.log"
    log.touch()
    key = f"limited-{uuid.uuid4()}"

    async def go() -> None:
        workers = [await spawn_worker(config_file, app=FLOW_APP) for _ in range(2)]
        try:
            async with Client(config, app=apps.flow_app) as client:
                handles = [
                    await client.start(
                        apps.limited_work, {"log": str(log), "seconds": 1.0}, routing_key=key
                    )
                    for _ in range(10)
                ]

                def open_run_pid() -> int | None:
                    open_runs: Counter[int] = Counter()
                    for line in log.read_text().splitlines():
                        fields = line.split()
                        if len(fields) == 4:  # not a line being written right now
                            open_runs[int(fields[2])] += 1 if fields[0] == "start" else -1
                    return next((pid for pid, n in open_runs.items() if n > 0), None)

                victims: list[int] = []

                def in_progress_after_a_few() -> bool:
                    pid = open_run_pid()
                    if len(log.read_text().splitlines()) >= 4 and pid is not None:
                        victims.append(pid)
                    return bool(victims)

                await wait_until(
                    in_progress_after_a_few, timeout=60, what="a few runs, one in progress"
                )
                next(p for p in workers if p.pid == victims[0]).send_signal(signal.SIGKILL)
                results = [await h.result(timeout=90) for h in handles]
                assert sorted(results) == sorted(h.workflow_id for h in handles)
            runs = _intervals(log, killed=victims[0])
            assert {r[2] for r in runs} == set(results)
            assert any(r[3] for r in runs), "the kill cut no run short: no crash was tested"
            assert _most_at_once(runs) == 2  # the limit, and it was reached
        finally:
            for proc in workers:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
            await asyncio.gather(*(p.wait() for p in workers))

    run(go(), timeout=170)


def test_one_run_per_concurrency_key_at_once_in_start_order(
    config: ClusterConfig, tmp_path: Path
) -> None:
    """Queue "keyed" (1 per key): runs of one key never overlap and keep their start order;
    the key routes them (a handle carries it), so the limit is exact on any cluster."""
    log = tmp_path / "runs.log"
    log.touch()
    prefix = uuid.uuid4().hex[:8]
    keys = [f"{prefix}-{k}" for k in "aaabbc"]

    async def go() -> None:
        async with Client(config, app=apps.flow_app) as client, Worker(apps.flow_app, config):
            handles = [
                await client.start(
                    apps.keyed_work, {"log": str(log), "seconds": 0.2}, concurrency_key=k
                )
                for k in keys
            ]
            assert [h.routing_key for h in handles] == keys
            for handle in handles:
                await handle.result(timeout=60)
        runs = _intervals(log)
        key_of = {h.workflow_id: k for h, k in zip(handles, keys, strict=True)}
        for key in set(keys):
            mine = sorted((r for r in runs if key_of[r[2]] == key), key=lambda r: r[0])
            started = [h.workflow_id for h, k in zip(handles, keys, strict=True) if k == key]
            assert [r[2] for r in mine] == started
            assert all(a[1] <= b[0] for a, b in itertools.pairwise(mine))  # one after another

    run(go())


def test_priority_orders_admission_and_a_waiting_workflow_keeps_its_slot(
    config: ClusterConfig, tmp_path: Path
) -> None:
    """Queue "ranked" (1 at a time): a workflow waiting for a signal holds the only slot;
    meanwhile three of priority 5, one started from SQL (priority 0), three of priority -1
    and one cancelled wait. After the signal they run smallest priority first, oldest first
    within a priority; the cancelled one never runs."""
    log = tmp_path / "order.log"
    log.touch()
    key = f"ranked-{uuid.uuid4()}"

    def spec(label: str, **more: Any) -> dict[str, Any]:
        return {"log": str(log), "label": label, **more}

    async def go() -> None:
        async with Client(config, app=apps.flow_app) as client, Worker(apps.flow_app, config):
            holder = await client.start(
                apps.ranked_work, spec("holder", hold=True), routing_key=key
            )
            await wait_until(
                lambda: _status(client, holder.workflow_id, key, "pending"),
                what="the holder to wait for its signal",
            )
            low = [
                await client.start(apps.ranked_work, spec(f"low{i}"), routing_key=key, priority=5)
                for i in range(3)
            ]
            dropped = await client.start(apps.ranked_work, spec("dropped"), routing_key=key)
            await wait_until(
                lambda: asyncio.to_thread(_catalogued, config, client, key),
                what="the worker to register its queued workflows for the SQL API",
            )
            sql_id = await asyncio.to_thread(_sql_start, config, client, key, spec("sql"))
            high = [
                await client.start(apps.ranked_work, spec(f"high{i}"), routing_key=key, priority=-1)
                for i in range(3)
            ]
            for handle in [*low, dropped, *high]:
                assert (await handle.status()) == "queued"
            assert (await client.get(sql_id, routing_key=key)).status == "queued"
            await dropped.cancel()
            await client.signal(holder.workflow_id, "go", routing_key=key)
            for handle in [holder, *low, *high]:
                await handle.result(timeout=60)
            await client.result(sql_id, routing_key=key, timeout=60)
            assert (await dropped.status()) == "cancelled"
        labels = log.read_text().split()
        assert labels == ["holder", "high0", "high1", "high2", "sql", "low0", "low1", "low2"]

    run(go())


def test_the_rate_limit_admits_at_most_n_per_period(config: ClusterConfig) -> None:
    """Queue "paced" (3 per second per node): 9 workflows on one node are admitted in
    three windows; any 4 consecutive admissions span at least a second (database clock).
    Each one's 30 s timeout counts from its admission, not from its start."""
    key = f"paced-{uuid.uuid4()}"

    async def go() -> None:
        async with Client(config, app=apps.flow_app) as client, Worker(apps.flow_app, config):
            handles = [await client.start(apps.paced_work, routing_key=key) for _ in range(9)]
            for handle in handles:
                await handle.result(timeout=60)
            admissions = await asyncio.to_thread(_admitted_at, config, client, key)
        times = [admitted for admitted, _ in admissions]
        assert len(times) == 9
        assert {deadline - admitted for admitted, deadline in admissions} == {timedelta(seconds=30)}
        gaps = [(times[i + 3] - times[i]).total_seconds() for i in range(len(times) - 3)]
        assert min(gaps) >= 1.0, gaps

    run(go())


# -- helpers -----------------------------------------------------------------------------------


async def _status(client: Client, wf_id: str, key: str, status: str) -> bool:
    return (await client.get(wf_id, routing_key=key)).status == status


def _node_dsn(config: ClusterConfig, client: Client, key: str) -> str:
    """Where the rows of ``key`` can be read: their node (plain), the coordinator (Citus)."""
    if config.backend == "citus":
        return config.nodes[0].dsn
    node = client.route(key)[1]
    return next(n.dsn for n in config.nodes if n.name == node)


def _sql_start(config: ClusterConfig, client: Client, key: str, spec: dict[str, Any]) -> str:
    """shardflow.start from SQL: the catalog puts the workflow in its queue."""
    import json

    with psycopg.connect(_node_dsn(config, client, key), autocommit=True) as conn:
        row = conn.execute(
            "SELECT shardflow.start('ranked_work', %s::json, routing_key => %s,"
            " app => 'tests-flow')",
            (json.dumps(spec), key),
        ).fetchone()
    assert row is not None
    return str(row[0])


def _catalogued(config: ClusterConfig, client: Client, key: str) -> bool:
    with psycopg.connect(_node_dsn(config, client, key)) as conn:
        return bool(
            conn.execute(
                "SELECT 1 FROM shardflow.workflow_catalog"
                " WHERE app = 'tests-flow' AND name = 'ranked_work' AND queue = 'ranked'"
            ).fetchall()
        )


def _admitted_at(config: ClusterConfig, client: Client, key: str) -> list[Any]:
    with psycopg.connect(_node_dsn(config, client, key)) as conn:
        rows = conn.execute(
            "SELECT dequeued_at, deadline_at FROM shardflow.workflows WHERE routing_key = %s"
            " ORDER BY dequeued_at",
            (key,),
        ).fetchall()
    return [(r[0], r[1]) for r in rows]
