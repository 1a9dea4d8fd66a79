"""The web dashboard (issue 12) over HTTP on the real cluster, both backends: every page, the
numbers it shows against the database, filters and pagination, actions and their refusals, the
token gate, hostile input, and its /metrics.

Requests go through Starlette's test client (the real app, its lifespan and middleware, in
this process).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Iterator
from datetime import timedelta
from html import unescape
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from shardflow import App, Client, Worker, WorkflowContext, WorkflowFailed
from shardflow.cluster.admin import ClusterStatus, NodeStatus, cluster_status
from shardflow.cluster.membership import ClusterAdmin
from shardflow.config import ClusterConfig
from shardflow.dashboard import create_app
from shardflow.dashboard.history import History, chart
from shardflow.routing import Placement
from tests import apps
from tests.helpers import run, wait_until

board_app = App("dashboard-test")
TOKEN = "a-token-of-enough-length"
# A cursor in the right shape whose id holds a NUL: ["2026-01-01T00:00:00+00:00", "a\u0000b"]
NUL_CURSOR = "WyIyMDI2LTAxLTAxVDAwOjAwOjAwKzAwOjAwIiwgImFcdTAwMDBiIl0="


@board_app.step
def charge(amount: int) -> int:
    if amount < 0:
        raise ValueError(f"cannot charge {amount}")
    return amount


@board_app.workflow
async def payment(ctx: WorkflowContext, amount: int) -> int:
    return await charge(amount)


@board_app.workflow
async def parked(ctx: WorkflowContext) -> None:
    return None


@pytest.fixture(scope="module")
def seeded(config: ClusterConfig) -> Iterator[dict[str, str]]:
    """A succeeded, a failed and a pending (never run) workflow of this module's app."""
    run_id = uuid.uuid4().hex[:8]
    ids = {
        "ok": f"pay-{run_id}-ok",
        "failed": f"pay-{run_id}-failed",
        "pending": f"pay-{run_id}-pending",
    }

    async def seed() -> None:
        async with Client(config, app=board_app) as client, Worker(board_app, config):
            assert await (await client.start(payment, 5, workflow_id=ids["ok"])).result(30) == 5
            with pytest.raises(WorkflowFailed):
                await (await client.start(payment, -1, workflow_id=ids["failed"])).result(30)
        async with Client(config, app=board_app) as client:
            await client.start(parked, workflow_id=ids["pending"])

    async def clean() -> None:
        async with Client(config, app=board_app) as client:
            await client.cancel(ids["pending"])

    run(seed())
    yield ids
    run(clean())


async def _placement(config: ClusterConfig) -> Placement:
    async with ClusterAdmin(config) as admin:
        return await admin.latest_placement()


async def _route(config: ClusterConfig, wf_id: str) -> tuple[int, str]:
    async with Client(config) as client:
        return client.route(wf_id)


def text(html: str) -> str:
    return unescape(re.sub(r"<[^>]+>", " ", html))


def test_the_cluster_page_shows_what_the_nodes_hold(
    config: ClusterConfig, seeded: dict[str, str]
) -> None:
    with TestClient(create_app(config)) as web:
        page = web.get("/")
    assert page.status_code == 200
    status = run(cluster_status(config))
    for node in status.nodes:
        row = re.search(rf'<tr data-node="{re.escape(node.name)}">(.*?)</tr>', page.text, re.S)
        assert row, node.name
        cells = dict(re.findall(r'data-field="(\w+)">(.*?)</td>', row.group(1), re.S))
        # No worker runs during the test: ended workflows stay as the page counted them.
        assert int(text(cells["failed"])) == node.workflows.get("failed", 0)
        assert int(text(cells["succeeded"])) == node.workflows.get("succeeded", 0)
        assert int(text(cells["runnable"])) >= 0
        in_use, allowed = (int(n) for n in text(cells["connections"]).split("/"))
        assert node.connections is not None and allowed == node.connections.allowed
        assert 0 < in_use <= allowed  # this page's own connection at least
    owners = dict(re.findall(r'<span title="partition (\d+): ([^"]+)"', page.text))
    placement = run(_placement(config))
    assert owners == {str(p): placement.owner(p) for p in range(placement.partition_count)}
    assert "read-only" in page.text


def test_a_failure_leads_to_its_workflow_and_traceback(
    config: ClusterConfig, seeded: dict[str, str]
) -> None:
    with TestClient(create_app(config)) as web:
        failures = web.get("/failures")
        assert failures.status_code == 200
        row = next(
            r
            for r in re.findall(r"<tr>(.*?)</tr>", failures.text, re.S)
            if ">payment<" in r and "StepFailedError" in r
        )
        assert "charge" in row  # the failed step, from the error
        example = re.search(r'class="example" href="([^"]+)"', row)
        assert example
        page = web.get(unescape(example.group(1)))
        assert page.status_code == 200
        assert "StepFailedError" in page.text and "ValueError" in page.text
        assert "Traceback (most recent call last)" in page.text  # the step's, from its checkpoint
        failed = web.get(f"/workflows/{seeded['failed']}")
        assert re.search(r'id="status">\s*failed', failed.text)
        partition, node = run(_route(config, seeded["failed"]))
        assert f"node {node}, partition {partition}" in text(failed.text)


def test_the_list_filters_and_pages(config: ClusterConfig, seeded: dict[str, str]) -> None:
    many = [f"dash-page-{uuid.uuid4().hex[:10]}" for _ in range(30)]

    async def start_many() -> None:
        async with Client(config, app=board_app) as client:
            await client.start_many(parked, [None] * len(many), workflow_ids=many)

    async def cancel_many() -> None:
        async with Client(config, app=board_app) as client:
            for wf_id in many:
                await client.cancel(wf_id)

    run(start_many())
    try:
        with TestClient(create_app(config)) as web:
            failed = web.get("/workflows", params={"status": "failed", "name": "payment"})
            assert seeded["failed"] in failed.text and seeded["ok"] not in failed.text
            _, node = run(_route(config, seeded["ok"]))
            on_node = web.get("/workflows", params={"node": node, "name": "payment", "limit": "25"})
            assert seeded["ok"] in on_node.text
            first = web.get("/workflows", params={"name": "parked", "limit": "25"})
            following = re.search(r'id="next" href="([^"]+)"', first.text)
            assert following, "30 parked workflows and 25 a page: a next page"
            second = web.get(unescape(following.group(1)))
            assert second.status_code == 200
            assert len(_ids(first.text)) == 25 and not _ids(first.text) & _ids(second.text)
            recent = web.get("/workflows", params={"name": "parked", "limit": "25", "since": "1h"})
            assert set(many) & _ids(recent.text)
            # "1h" ago moves with the clock: the next page keeps this page's instant.
            recent_next = re.search(r'id="next" href="([^"]+)"', recent.text)
            assert recent_next
            next_href = unescape(recent_next.group(1))
            assert re.search(r"since=\d{4}-\d\d-\d\dT", next_href), next_href
            assert web.get(next_href).status_code == 200
            old = web.get("/workflows", params={"name": "parked", "until": "2000-01-01"})
            assert old.status_code == 200 and "No workflows match." in old.text
            later = _ids(second.text) | _older(web, second.text)
            assert set(many) <= _ids(first.text) | later
            found = web.get("/workflows", params={"id": seeded["ok"]}, follow_redirects=False)
            assert found.status_code == 303
            assert found.headers["location"].endswith(seeded["ok"])
    finally:
        run(cancel_many())


def _ids(html: str) -> set[str]:
    return set(re.findall(r'<a href="/workflows/([^"?]+)">', html))


def _older(web: TestClient, html: str) -> set[str]:
    """Ids on the pages after this one (other tests' parked workflows may come between)."""
    found: set[str] = set()
    while following := re.search(r'id="next" href="([^"]+)"', html):
        html = web.get(unescape(following.group(1))).text
        found |= _ids(html)
    return found


@pytest.mark.parametrize(
    ("path", "params", "code", "says"),
    [
        ("/workflows", {"status": "exploded"}, 400, "status must be one of"),
        ("/workflows", {"limit": "100000"}, 400, "limit must be one of"),
        ("/workflows", {"cursor": "not-a-cursor"}, 400, "cursor is not one"),
        ("/workflows", {"node": "node99"}, 400, "node must be one of"),
        ("/workflows", {"name": "x" * 500}, 400, "workflow name"),
        ("/workflows", {"since": "yesterday"}, 400, "since must be a duration ago"),
        ("/workflows", {"until": "2026-99-01"}, 400, "until must be a duration ago"),
        ("/workflows", {"since": "1h", "until": "2h"}, 400, "must be before"),
        ("/workflows/<script>alert(1)</script>", {}, 404, "No such workflow"),
        ("/workflows/" + "y" * 5000, {}, 400, "workflow id"),
        ("/actions/explode/abc", {}, 404, "No such action"),
        (
            "/workflows",
            {"cursor": "WyIyMDI2LTAxLTAxVDAwOjAwOjAwKzAwOjAwIiwgImFcdTAwMDBiIl0="},
            400,
            "cursor",
        ),
        ("/workflows", {"cursor": "eyJhIjogMSwgImIiOiAyfQ=="}, 400, "cursor is not one"),
        ("/workflows", {"key": "x" * 500, "id": "abc"}, 400, "routing key"),
        ("/nowhere", {}, 404, ""),
    ],
)
def test_hostile_requests_get_a_clear_4xx(
    config: ClusterConfig, path: str, params: dict[str, str], code: int, says: str
) -> None:
    with TestClient(create_app(config)) as web:
        answer = web.get(path, params=params)
    assert answer.status_code == code
    assert says in unescape(answer.text)
    assert "Traceback" not in answer.text and "<script>alert" not in answer.text


def test_actions_are_refused_read_only_and_audited_when_allowed(
    config: ClusterConfig, seeded: dict[str, str]
) -> None:
    target = f"dash-cancel-{uuid.uuid4().hex[:8]}"

    async def start() -> None:
        async with Client(config, app=board_app) as client:
            await client.start(parked, workflow_id=target)

    run(start())
    with TestClient(create_app(config)) as web:
        refused = web.post(f"/actions/cancel/{target}", data={"form_token": "x"})
        assert refused.status_code == 403 and "read-only" in refused.text
        assert 'id="cancel"' not in web.get(f"/workflows/{target}").text
    with TestClient(create_app(config, allow_actions=True)) as web:
        page = web.get(f"/workflows/{target}")
        assert 'id="cancel"' in page.text
        confirm = web.get(f"/actions/cancel/{target}")
        token = re.search(r'name="form_token" value="([^"]+)"', confirm.text)
        assert confirm.status_code == 200 and token
        forged = web.post(f"/actions/cancel/{target}", data={"form_token": "forged"})
        assert forged.status_code == 403
        done = web.post(f"/actions/cancel/{target}", data={"form_token": token.group(1)})
        assert done.status_code == 200 and "Cancelled." in done.text
        assert re.search(r'id="status">\s*cancelled', done.text)
        again = web.post(f"/actions/requeue/{target}", data={"form_token": token.group(1)})
        assert "Not requeued: it is not dead-lettered." in unescape(again.text)

    async def audited() -> list[dict[str, object]]:
        async with ClusterAdmin(config) as admin:
            return await admin.audit_log(limit=200)

    entries = [e for e in run(audited()) if e["target"] == target]
    assert any(e["action"] == "cancel" and "dashboard" in str(e["actor"]) for e in entries)


def test_a_signal_from_the_workflow_page_reaches_its_wait_and_is_audited(
    config: ClusterConfig,
) -> None:
    async def waiting() -> str:
        async with Client(config, app=apps.app) as client:
            return (await client.start(apps.approval, 600)).workflow_id

    async def audited(wf_id: str) -> list[dict[str, object]]:
        async with ClusterAdmin(config) as admin:
            return [e for e in await admin.audit_log(limit=500) if e["target"] == wf_id]

    wf_id = run(waiting())
    with TestClient(create_app(config, allow_actions=True)) as web:
        assert 'id="signal"' in web.get(f"/workflows/{wf_id}").text
        confirm = web.get(f"/actions/signal/{wf_id}")
        token = re.search(r'name="form_token" value="([^"]+)"', confirm.text)
        assert confirm.status_code == 200 and token
        form = {"form_token": token.group(1), "name": "approve"}
        bad = web.post(f"/actions/signal/{wf_id}", data={**form, "payload": "{by: ops}"})
        assert bad.status_code == 400 and "not valid JSON" in unescape(bad.text)
        reserved = web.post(f"/actions/signal/{wf_id}", data={**form, "name": "shardflow.x"})
        assert reserved.status_code == 400 and "reserves" in unescape(reserved.text)
        assert run(audited(wf_id)) == [], "a refused signal writes nothing"
        sent = {**form, "payload": '{"by": "ops"}', "signal_id": "approve-once"}
        done = web.post(f"/actions/signal/{wf_id}", data=sent)
        assert done.status_code == 200 and "Signal sent" in unescape(done.text)
        again = web.post(f"/actions/signal/{wf_id}", data=sent)
        assert "Not sent again" in unescape(again.text)

    async def finish() -> object:
        async with Worker(apps.app, config), Client(config, app=apps.app) as client:
            return await client.result(wf_id, timeout=30)

    assert run(finish()) == {"approved": True, "by": "ops"}
    entries = run(audited(wf_id))
    assert [e["action"] for e in entries] == ["signal"]
    assert "dashboard" in str(entries[0]["actor"])
    with TestClient(create_app(config, allow_actions=True)) as web:
        page = web.get(f"/actions/signal/{wf_id}").text
        token = re.search(r'name="form_token" value="([^"]+)"', page)
        assert token, "a new dashboard process has a new form token"
        ended = web.post(
            f"/actions/signal/{wf_id}", data={"form_token": token.group(1), "name": "approve"}
        )
        assert ended.status_code == 400 and "succeeded" in unescape(ended.text)


def test_rebalance_progress_counts_moves_done_of_all_due() -> None:
    nodes = [
        NodeStatus(name="n1", address="a", reachable=True, moves_done_last_hour=3),
        NodeStatus(name="n2", address="b", reachable=True, unfinished_moves=1),
    ]
    moving = ClusterStatus(
        placement_version=2, nodes=nodes, partitions_to_move=4, stalled_after_seconds=60
    )
    assert moving.rebalance_in_progress and moving.rebalance_progress() == (3, 8)
    idle = ClusterStatus(
        placement_version=2, nodes=nodes[:1], partitions_to_move=0, stalled_after_seconds=60
    )
    assert not idle.rebalance_in_progress and idle.rebalance_progress() is None


def test_the_token_gate(config: ClusterConfig) -> None:
    with TestClient(create_app(config, token=TOKEN)) as web:
        assert web.get("/").status_code == 401
        assert web.get("/metrics").status_code == 401
        assert web.get("/health").status_code == 200
        wrong = web.get("/", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert web.get("/", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert web.post("/login", data={"token": "nope"}).status_code == 401
        signed_in = web.post("/login", data={"token": TOKEN})
        assert signed_in.status_code == 200  # redirected to the cluster page, cookie set
        assert web.get("/workflows").status_code == 200
        assert TOKEN not in signed_in.text


def test_metrics_add_up_to_the_database(config: ClusterConfig, seeded: dict[str, str]) -> None:
    with TestClient(create_app(config)) as web:
        answer = web.get("/metrics")
    assert answer.status_code == 200
    samples = [s for f in text_string_to_metric_families(answer.text) for s in f.samples]
    status = run(cluster_status(config))
    for node in status.nodes:
        for state, count in node.workflows.items():
            (sample,) = [
                s
                for s in samples
                if s.name == "shardflow_cluster_workflows"
                and s.labels == {"node": node.name, "status": state}
            ]
            assert sample.value == count
    assert {s.labels["node"] for s in samples if s.name == "shardflow_node_up"} == {
        n.name for n in status.nodes
    }
    for node in status.nodes:
        assert node.connections is not None
        (allowed,) = [
            s.value
            for s in samples
            if s.name == "shardflow_cluster_connections"
            and s.labels == {"node": node.name, "state": "allowed"}
        ]
        assert allowed == node.connections.allowed
        moved = [
            s.value
            for s in samples
            if s.name == "shardflow_rebalance_partitions_moved_total"
            and s.labels == {"node": node.name}
        ]
        assert moved == ([] if config.backend == "citus" else [node.moves_done])


def test_pages_of_a_cluster_with_a_waiting_workflow(config: ClusterConfig) -> None:
    """A workflow waiting for a signal shows what it waits for, and its events."""

    async def go() -> str:
        async with Worker(apps.app, config), Client(config, app=apps.app) as client:
            handle = await client.start(apps.approval, 600)
            assert await handle.get_event("stage", timeout=20) == "waiting for approval"
            return handle.workflow_id

    wf_id = run(go())
    try:
        with TestClient(create_app(config)) as web:
            page = text(web.get(f"/workflows/{wf_id}").text)
        assert "waiting for signal approve" in page
        assert "stage" in page and "waiting for approval" in page
    finally:

        async def cancel() -> None:
            async with Client(config, app=apps.app) as client:
                await client.cancel(wf_id)

        run(cancel())


def test_the_last_hour_is_sampled_per_node(config: ClusterConfig) -> None:
    """Two samples around finished work: a throughput and a p99 per node, drawn as lines."""
    # The latency sample: what started in the last five minutes, finished or not.
    history = History(config, interval=10, latency_started=(timedelta(minutes=5), timedelta(0)))

    async def claims_written(worker: Worker) -> int:
        async with ClusterAdmin(config) as admin:
            placement = await admin.latest_placement()
            names = sorted(n.name for n in placement.nodes)
            counts = [await admin.admin(n).worker_claims(n) for n in names]
        return sum(c[worker.owner].claimed for c in counts if worker.owner in c)

    async def go() -> None:
        await history.sample()
        async with Client(config, app=board_app) as client, Worker(board_app, config) as worker:
            handles = await client.start_many(payment, [1] * 30)
            for handle in handles:
                assert await handle.result(timeout=30) == 1
            # The heartbeat writes the worker's claims per node; sample once it has.
            await wait_until(
                lambda: _at_least(claims_written(worker), 30), what="the claims' heartbeat"
            )
            await history.sample()

    run(go())
    status = run(cluster_status(config))
    assert set(history.points) == {n.name for n in status.nodes}
    points = [history.latest(n.name) for n in status.nodes]
    assert all(p is not None and p.ended_per_second is not None for p in points)
    assert sum(p.ended_per_second or 0 for p in points if p) > 0
    assert sum(p.claims_per_second or 0 for p in points if p) > 0
    assert any(p is not None and p.p99_seconds is not None for p in points)
    drawn = chart(
        {n: [(p.at, p.ended_per_second or 0) for p in history.points[n]] for n in history.points},
        {},
        unit="ended/s",
    )
    assert drawn.count("<polyline") == len(status.nodes)
    with TestClient(create_app(config, sample_seconds=60)) as web:
        page = web.get("/")
    assert "Last hour" in page.text and page.text.count('<svg class="chart"') == 2


def test_headers_hosts_and_odd_requests(config: ClusterConfig, seeded: dict[str, str]) -> None:
    app = create_app(config, allow_actions=True, allowed_hosts=["localhost", "testserver"])
    with TestClient(app) as web:
        page = web.get("/")
        assert page.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert page.headers["x-content-type-options"] == "nosniff"
        assert web.get("/", headers={"host": "evil.example"}).status_code == 400
        # HEAD shows the confirmation, never acts; a non-ASCII form token is refused cleanly.
        assert web.head(f"/actions/cancel/{seeded['pending']}").status_code == 200
        odd = web.post(f"/actions/cancel/{seeded['pending']}", data={"form_token": "é"})
        assert odd.status_code == 403


def test_a_child_under_its_parents_routing_key_is_reached_from_its_parent(
    config: ClusterConfig,
) -> None:
    async def go() -> str:
        async with Worker(apps.app, config), Client(config, app=apps.app) as client:
            parent = await client.start(apps.fan_out, {"count": 2, "spread": True})
            assert await parent.result(timeout=60) == 3
            return parent.workflow_id

    parent_id = run(go())
    with TestClient(create_app(config)) as web:
        page = web.get(f"/workflows/{parent_id}")
        links = re.findall(r'<li><a href="([^"]+)">', page.text)
        assert len(links) == 2 and all("?key=" in link for link in links)
        child = web.get(unescape(links[0]))
        assert child.status_code == 200 and "succeeded" in child.text
        back = re.search(r'<th>parent</th><td><a href="([^"]+)">', child.text)
        assert back and web.get(unescape(back.group(1))).status_code == 200


def test_the_cli_refuses_actions_beyond_localhost_without_a_token(config_file: Path) -> None:
    from click.testing import CliRunner

    from shardflow.cli import cli

    argv = ["--config", str(config_file), "dashboard", "--host", "0.0.0.0", "--allow-actions"]
    refused = CliRunner().invoke(cli, argv, env={"SHARDFLOW_DASHBOARD_TOKEN": None})
    assert refused.exit_code == 2 and "needs a token" in refused.output
    short = CliRunner().invoke(cli, argv, env={"SHARDFLOW_DASHBOARD_TOKEN": "short"})
    assert short.exit_code == 2 and "at least 16 characters" in short.output


async def _at_least(count: Awaitable[int], minimum: int) -> bool:
    return await count >= minimum
