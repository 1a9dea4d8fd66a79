"""Schedules (issue 13): one run per tick however many workers run and whichever is killed,
the missed-tick policies, backfill, the API and CLI, schedules declared in code. Both
backends (the policy tests need no database).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from shardflow import App, Client, InvalidInput, ScheduleNotFound, Worker, WorkflowContext
from shardflow.cli import cli
from shardflow.cluster.membership import ClusterAdmin
from shardflow.config import ClusterConfig
from shardflow.errors import ConfigurationError
from shardflow.schedules.cron import ticks
from shardflow.schedules.policy import LATE_GRACE, plan_ticks
from shardflow.schedules.runs import run_id, tick_of
from tests import apps
from tests.helpers import run, spawn_worker, wait_until

T0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


# -- the policies, without a database ------------------------------------------------------


def test_a_tick_due_now_starts_and_the_next_one_follows() -> None:
    plan = plan_ticks(
        "*/5 * * * *", "UTC", next_tick_at=T0, now=T0 + timedelta(seconds=1), missed="skip"
    )
    assert plan.start == [T0] and plan.next_tick_at == T0 + timedelta(minutes=5)
    early = plan_ticks(
        "*/5 * * * *", "UTC", next_tick_at=T0, now=T0 - timedelta(seconds=1), missed="skip"
    )
    assert early.start == [] and early.next_tick_at == T0


def test_missed_ticks_after_an_outage_follow_the_policy() -> None:
    now = T0 + timedelta(hours=2, seconds=30)  # every worker was down for two hours
    skip = plan_ticks("*/5 * * * *", "UTC", next_tick_at=T0, now=now, missed="skip")
    assert skip.start == [T0 + timedelta(hours=2)]  # only the one at most a minute late
    once = plan_ticks("*/5 * * * *", "UTC", next_tick_at=T0, now=now, missed="once")
    assert once.start == [T0 + timedelta(hours=2)]
    everything = plan_ticks("*/5 * * * *", "UTC", next_tick_at=T0, now=now, missed="all")
    assert everything.start == [T0 + timedelta(minutes=5 * i) for i in range(25)]
    bounded = plan_ticks(
        "*/5 * * * *", "UTC", next_tick_at=T0, now=now, missed="all", catchup=timedelta(minutes=12)
    )
    assert bounded.start == [
        T0 + timedelta(minutes=110),
        T0 + timedelta(minutes=115),
        T0 + timedelta(hours=2),
    ]
    for plan in (skip, once, everything, bounded):
        assert plan.next_tick_at == T0 + timedelta(hours=2, minutes=5)
    # Three minutes after the last tick: too late for `skip` (at most LATE_GRACE late).
    late = T0 + timedelta(hours=2, minutes=3)
    assert plan_ticks("*/5 * * * *", "UTC", next_tick_at=T0, now=late, missed="skip").start == []


def test_a_pass_starts_at_most_its_limit_and_the_next_goes_on() -> None:
    now = T0 + timedelta(minutes=10)
    first = plan_ticks("* * * * * *", "UTC", next_tick_at=T0, now=now, missed="all", limit=100)
    assert len(first.start) == 100 and first.next_tick_at == T0 + timedelta(seconds=100)
    second = plan_ticks(
        "* * * * * *", "UTC", next_tick_at=first.next_tick_at, now=now, missed="all", limit=1000
    )
    assert second.start[0] == T0 + timedelta(seconds=100) and second.start[-1] == now


def test_time_zones_and_daylight_saving() -> None:
    # 02:30 every day in Berlin: the night clocks skip 02:00-03:00 it runs at 03:00.
    start = datetime(2026, 3, 28, 12, 0, tzinfo=UTC)
    found = list(_take(ticks("30 2 * * *", "Europe/Berlin", after=start), 3))
    assert [t.isoformat() for t in found] == [
        "2026-03-29T01:00:00+00:00",
        "2026-03-30T00:30:00+00:00",
        "2026-03-31T00:30:00+00:00",
    ]


@settings(max_examples=200, deadline=None)
@given(
    cron=st.sampled_from(["* * * * *", "*/5 * * * *", "0 * * * *", "* * * * * */7", "15 3 * * 1"]),
    behind=st.integers(min_value=-600, max_value=3 * 86400),
    missed=st.sampled_from(["skip", "once", "all"]),
    limit=st.integers(min_value=1, max_value=50),
)
def test_plans_start_due_ticks_only_in_order_and_move_forward(
    cron: str, behind: int, missed: str, limit: int
) -> None:
    now = T0 + timedelta(days=3)
    next_tick_at = next(ticks(cron, "UTC", after=now - timedelta(seconds=behind)))
    plan = plan_ticks(cron, "UTC", next_tick_at=next_tick_at, now=now, missed=missed, limit=limit)
    assert plan.start == sorted(set(plan.start)) and len(plan.start) <= max(limit, 1)
    assert all(next_tick_at <= t <= now for t in plan.start)
    assert plan.next_tick_at > (
        plan.start[-1] if plan.start else next_tick_at - timedelta(microseconds=1)
    )
    assert plan.next_tick_at >= next_tick_at
    if missed == "skip":
        assert all(now - t <= LATE_GRACE for t in plan.start)
    if missed == "once":
        assert len(plan.start) <= 1


def _take(it: Iterator[datetime], n: int) -> Iterator[datetime]:
    for _ in range(n):
        yield next(it)


# -- on the cluster ------------------------------------------------------------------------


def _name(label: str) -> str:
    return f"sched-{label}-{uuid.uuid4().hex[:8]}"


async def _runs(client: Client, name: str) -> list[str]:
    """The ids of schedule ``name``'s runs (they live on its partition)."""
    node = client.route(name)[1]
    found: list[str] = []
    cursor = None
    while True:
        page = await client.list(name="no_input", node=node, limit=1000, cursor=cursor)
        found += [r.workflow_id for r in page.items if r.workflow_id.startswith(f"{name}@")]
        if not page.next_cursor:
            return found
        cursor = page.next_cursor


def test_the_api_checks_before_it_writes(config: ClusterConfig) -> None:
    name = _name("api")

    async def go() -> None:
        async with Client(config, app=apps.app) as client:
            refusals = (
                (apps.no_input, "every day", "UTC", "skip", "not a cron expression"),
                (apps.no_input, "0 0 30 2 *", "UTC", "skip", "not a cron expression"),
                (apps.no_input, "* * * * * * 2020", "UTC", "skip", "not a cron expression"),
                (apps.no_input, "*/5 * * * *", "Mars/Olympus", "skip", "unknown"),
                (apps.no_input, "*/5 * * * *", "UTC", "sometimes", "missed must be one of"),
                (apps.three_steps, "*/5 * * * *", "UTC", "skip", "needs an input"),
            )
            for workflow, cron, zone, missed, match in refusals:
                with pytest.raises(InvalidInput, match=match):
                    await client.schedules.create(
                        name, workflow, cron, timezone=zone, missed=missed
                    )
            with pytest.raises(ScheduleNotFound):
                await client.schedules.get(name)
            made = await client.schedules.create(name, apps.no_input, "*/5 * * * *")
            assert made.spec.source == "api" and not made.paused
            assert made.next_tick_at.minute % 5 == 0 and made.next_tick_at > datetime.now(UTC)
            same = await client.schedules.create(name, apps.no_input, "0 * * * *")
            assert same.spec.cron == "*/5 * * * *"  # not replaced without replace=True
            changed = await client.schedules.create(name, apps.no_input, "0 * * * *", replace=True)
            assert changed.spec.cron == "0 * * * *" and changed.next_tick_at.minute == 0
            assert (await client.schedules.pause(name)).paused
            resumed = await client.schedules.resume(name)
            assert not resumed.paused and resumed.next_tick_at > datetime.now(UTC)
            assert name in {r.spec.name for r in await client.schedules.list()}
            assert await client.schedules.delete(name)
            assert not await client.schedules.delete(name)
        async with ClusterAdmin(config) as admin:
            actions = {r["action"] for r in await admin.audit_log(limit=500) if r["target"] == name}
        assert {"schedule_put", "schedule_pause", "schedule_resume", "schedule_delete"} <= actions

    run(go())


def test_each_tick_starts_one_run_and_backfill_fills_the_past(config: ClusterConfig) -> None:
    name = _name("ticks")

    async def go() -> None:
        async with Client(config, app=apps.app) as client, Worker(apps.app, config):
            await client.schedules.create(name, apps.no_input, "* * * * * *")

            async def three() -> bool:
                return len(await _runs(client, name)) >= 3

            await wait_until(three, timeout=30, what="three ticks")
            await client.schedules.pause(name)
            started = sorted(await _runs(client, name))
            for wf_id in started[:3]:
                assert await client.result(wf_id, routing_key=name, timeout=30) == wf_id
                record = await client.get(wf_id, routing_key=name)
                tick = tick_of(wf_id)
                assert tick is not None and record.created_at is not None
                assert timedelta(0) <= record.created_at - tick < timedelta(seconds=30)
            # Backfill: every second of a past minute; a second backfill starts nothing.
            until = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
            since = until - timedelta(seconds=30)
            first = await client.schedules.backfill(name, since, until)
            assert sorted(first) == [run_id(name, since + timedelta(seconds=i)) for i in range(30)]
            assert await client.schedules.backfill(name, since, until) == []
            with pytest.raises(InvalidInput, match="covers the past"):
                await client.schedules.backfill(name, since, datetime.now(UTC) + timedelta(hours=1))
            await client.schedules.delete(name)

    run(go())


@pytest.mark.timeout(180)
def test_one_run_per_tick_when_the_scheduling_worker_is_killed(
    config: ClusterConfig, config_file: Path
) -> None:
    """Two worker processes; the one whose scheduler holds the node's lease is killed -9;
    the other takes over and catches up (`all`): every second has exactly one run."""
    name = _name("kill")

    async def go() -> None:
        workers = [await spawn_worker(config_file) for _ in range(2)]
        try:
            async with Client(config, app=apps.app) as client:
                await client.schedules.create(name, apps.no_input, "* * * * * *", missed="all")
                node = client.route(name)[1]

                async def holder_pid() -> int | None:
                    holder = await _lease_holder(config, client, node)
                    pids = {p.pid for p in workers}
                    pid = int(holder.split(":")[1]) if holder else None
                    return pid if pid in pids else None

                async def ticking() -> bool:
                    return len(await _runs(client, name)) >= 3 and await holder_pid() is not None

                await wait_until(ticking, timeout=60, what="ticks from a worker's scheduler")
                victim = await holder_pid()
                assert victim is not None
                next(p for p in workers if p.pid == victim).send_signal(signal.SIGKILL)
                killed_at = datetime.now(UTC)

                async def caught_up() -> bool:
                    last = max(filter(None, map(tick_of, await _runs(client, name))))
                    return last > killed_at + timedelta(seconds=8)

                await wait_until(caught_up, timeout=60, what="the other worker to take over")
                await client.schedules.pause(name)
                found = await _runs(client, name)
                seconds = sorted(filter(None, map(tick_of, found)))
                assert len(found) == len(set(seconds))  # one run per tick
                span = int((seconds[-1] - seconds[0]).total_seconds()) + 1
                assert seconds == [seconds[0] + timedelta(seconds=i) for i in range(span)]  # no gap
                await client.schedules.delete(name)
        finally:
            for proc in workers:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
            await asyncio.gather(*(p.wait() for p in workers))

    run(go())


async def _lease_holder(config: ClusterConfig, client: Client, node: str) -> str | None:
    """Who holds the scheduler lease of ``node`` (plain: on that node; Citus: one table)."""
    dsn = config.nodes[0].dsn
    if config.backend == "plain":
        dsn = next(n.dsn for n in config.nodes if n.name == node)

    def read() -> str | None:
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT holder FROM shardflow.service_leases "
                "WHERE service = %s AND expires_at > now()",
                (f"sched:{node}",),
            ).fetchone()
            return None if row is None else str(row[0])

    return await asyncio.to_thread(read)


declared = App("scheduled-in-code")


@declared.workflow(schedule="* * * * * *")
async def heartbeat_check(ctx: WorkflowContext) -> str:
    return "checked"


def test_schedules_declared_in_code_are_kept_by_the_workers(
    config: ClusterConfig, config_file: Path
) -> None:
    name = "scheduled-in-code.heartbeat_check"

    async def go() -> None:
        async with Client(config, app=declared) as client, Worker(declared, config):

            async def ran() -> bool:
                with contextlib.suppress(ScheduleNotFound):
                    record = await client.schedules.get(name)
                    return record.last_run_id is not None
                return False

            await wait_until(ran, timeout=30, what="the declared schedule's first run")
            record = await client.schedules.get(name)
            assert record.spec.source == "code" and record.spec.workflow_name == "heartbeat_check"
            assert record.last_run_id is not None
            assert (
                await client.result(record.last_run_id, routing_key=name, timeout=30) == "checked"
            )
            await client.schedules.delete(name)  # the next worker start declares it again

    run(go())
    shown = CliRunner().invoke(cli, ["--config", str(config_file), "schedule", "list"])
    assert shown.exit_code == 0, shown.output


def test_a_scheduled_workflow_must_be_startable_without_input() -> None:
    bad = App("bad-schedules")
    with pytest.raises(ConfigurationError, match="needs an input"):

        @bad.workflow(schedule="* * * * *")
        async def needs(ctx: WorkflowContext, value: int) -> int:
            return value

    with pytest.raises(ConfigurationError, match="not a cron expression"):

        @bad.workflow(schedule="whenever")
        async def never(ctx: WorkflowContext) -> None:
            return None


def test_cli_create_list_pause_delete(config_file: Path) -> None:
    name = _name("cli")
    base = ["--config", str(config_file), "schedule"]
    made = CliRunner().invoke(
        cli,
        [*base, "create", name, "no_input", "--app", "tests.apps:app", "--cron", "0 3 * * *",
         "--timezone", "Europe/Berlin", "--missed", "once"],
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    assert f"{name}\tno_input\t0 3 * * *\tEurope/Berlin\tmissed=once\tactive" in made.output
    listed = CliRunner().invoke(cli, [*base, "list"])
    assert name in listed.output
    paused = CliRunner().invoke(cli, [*base, "pause", name])
    assert "\tpaused\t" in paused.output
    bad = CliRunner().invoke(
        cli, [*base, "create", _name("bad"), "no_input", "--app", "tests.apps:app", "--cron", "x"]
    )
    assert bad.exit_code != 0 and "not a cron expression" in bad.output
    assert "deleted" in CliRunner().invoke(cli, [*base, "delete", name]).output
