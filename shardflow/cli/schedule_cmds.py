"""``shardflow schedule ...``: create, list, pause, resume, delete and backfill schedules."""

from __future__ import annotations

import json

import click

from shardflow.cli.base import CliState, cli, pass_state, run_async
from shardflow.cli.workflow_cmds import load_app
from shardflow.client import Client
from shardflow.schedules.policy import MISSED_POLICIES
from shardflow.storage.schedule_store import ScheduleRecord
from shardflow.timebounds import check_time_range, parse_time_bound


@cli.group()
def schedule() -> None:
    """Workflows started on a clock: one run per tick, however many workers run."""


@schedule.command("create")
@click.argument("name")
@click.argument("workflow")
@click.option("--app", "app_spec", required=True, help="The App that defines WORKFLOW.")
@click.option(
    "--cron", required=True, help="When: '*/5 * * * *' (5 fields), or 6 with seconds last."
)
@click.option("--timezone", default="UTC", show_default=True, help="An IANA time zone.")
@click.option("--input", "input_json", help="Each run's input as JSON text.")
@click.option(
    "--missed",
    type=click.Choice(MISSED_POLICIES),
    default="skip",
    show_default=True,
    help="Ticks missed while no worker ran: skip them, run once, or run all (within --catchup).",
)
@click.option("--catchup", default="1d", show_default=True, help="How far back `all` goes.")
@click.option("--paused", is_flag=True, help="Create it paused.")
@click.option("--replace", is_flag=True, help="Give an existing schedule this definition.")
@pass_state
def schedule_create(
    state: CliState,
    name: str,
    workflow: str,
    app_spec: str,
    cron: str,
    timezone: str,
    input_json: str | None,
    missed: str,
    catchup: str,
    paused: bool,
    replace: bool,
) -> None:
    """Start WORKFLOW on every tick of --cron, as schedule NAME (audited)."""
    try:
        payload = None if input_json is None else json.loads(input_json)
    except json.JSONDecodeError as exc:
        raise click.ClickException(f"--input is not valid JSON: {exc}") from None
    app = load_app(app_spec)

    async def go() -> ScheduleRecord:
        async with Client(state.config(), app=app) as client:
            return await client.schedules.create(
                name,
                workflow,
                cron,
                timezone=timezone,
                input=payload,
                missed=missed,
                catchup=catchup,
                paused=paused,
                replace=replace,
            )

    click.echo(_line(run_async(go())))


@schedule.command("list")
@pass_state
def schedule_list(state: CliState) -> None:
    """Every schedule: name, workflow, cron, zone, missed policy, state, next tick, last run."""

    async def go() -> list[ScheduleRecord]:
        async with Client(state.config()) as client:
            return await client.schedules.list()

    for record in run_async(go()):
        click.echo(_line(record))


@schedule.command("pause")
@click.argument("name")
@pass_state
def schedule_pause(state: CliState, name: str) -> None:
    """No ticks of NAME start until it is resumed (audited)."""

    async def go() -> ScheduleRecord:
        async with Client(state.config()) as client:
            return await client.schedules.pause(name)

    click.echo(_line(run_async(go())))


@schedule.command("resume")
@click.argument("name")
@pass_state
def schedule_resume(state: CliState, name: str) -> None:
    """Ticks of NAME start again from the next one (those of the pause do not run; audited)."""

    async def go() -> ScheduleRecord:
        async with Client(state.config()) as client:
            return await client.schedules.resume(name)

    click.echo(_line(run_async(go())))


@schedule.command("delete")
@click.argument("name")
@pass_state
def schedule_delete(state: CliState, name: str) -> None:
    """Remove schedule NAME (its runs stay; audited)."""

    async def go() -> bool:
        async with Client(state.config()) as client:
            return await client.schedules.delete(name)

    click.echo("deleted" if run_async(go()) else "no such schedule: nothing to do")


@schedule.command("backfill")
@click.argument("name")
@click.option("--since", required=True, help="From: 2h, 7d (ago) or an ISO 8601 time.")
@click.option("--until", required=True, help="To (excluded), in the past: same forms.")
@pass_state
def schedule_backfill(state: CliState, name: str, since: str, until: str) -> None:
    """Start a run of NAME for every tick in [--since, --until) that has none."""

    async def go() -> list[str]:
        start = parse_time_bound(since, what="--since")
        end = parse_time_bound(until, what="--until")
        check_time_range(start, end, labels=("--since", "--until"))
        async with Client(state.config()) as client:
            return await client.schedules.backfill(name, start, end)

    started = run_async(go())
    click.echo(f"started {len(started)} runs")


def _line(record: ScheduleRecord) -> str:
    spec = record.spec
    state = "paused" if record.paused else "active"
    return (
        f"{spec.name}\t{spec.workflow_name}\t{spec.cron}\t{spec.timezone}\tmissed={spec.missed}"
        f"\t{state}\tnext {record.next_tick_at.isoformat()}\tlast {record.last_run_id or '-'}"
    )
