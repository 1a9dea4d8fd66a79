"""The web dashboard (`shardflow dashboard`): an ASGI app with server-rendered pages.

Starlette routes and Jinja2 templates (autoescaped), no JavaScript build: pages work without
scripts. It reads the cluster through the same client and admin code as the CLI, so it works
on plain nodes and on Citus alike.

Safety: read-only unless started with ``allow_actions``; actions (cancel, requeue, signal) go
through a confirmation form carrying a per-process token (no cross-site posts) and are written
to the audit log under the dashboard's actor. With a ``token``, every request needs it (an
``Authorization: Bearer`` header, or the cookie the login form sets). Errors render a page
with what to do, never a traceback; inputs are validated before any query, and every query is
a named statement with parameters.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.datastructures import URL, FormData
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from shardflow.audit import default_actor
from shardflow.cli.step_view import about
from shardflow.client import Client
from shardflow.cluster.admin import cluster_status
from shardflow.cluster.membership import ClusterAdmin
from shardflow.config import ClusterConfig
from shardflow.dashboard import metrics as dashboard_metrics
from shardflow.dashboard.history import History, chart
from shardflow.engine.codec import check_identifier, check_name
from shardflow.engine.context import START_CHILD_STEP_PREFIX
from shardflow.errors import (
    InvalidInput,
    NodeUnavailable,
    ShardflowError,
    SignalRefused,
    WorkflowNotFound,
)
from shardflow.storage.records import STATUSES, FailureGroup
from shardflow.timebounds import check_time_range, parse_time_bound

log = logging.getLogger("shardflow.dashboard")

TEMPLATES = Path(__file__).parent / "templates"
PAGE_SIZES = (25, 50, 100, 200)
COOKIE = "shardflow_dashboard"
# Node colours of the partition map (cycled for larger clusters).
PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#59a14f",
    "#e15759",
    "#76b7b2",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
)


class Dashboard:
    """The app's state: configuration, one client for the whole process, the templates."""

    def __init__(
        self,
        config: ClusterConfig,
        *,
        allow_actions: bool,
        token: str | None,
        sample_seconds: float,
    ):
        self.config = config
        self.history = History(config, interval=sample_seconds)
        self.allow_actions = allow_actions
        self.token = token
        # Forms of actions carry it: a page of another site cannot post one.
        self.form_token = secrets.token_urlsafe(24)
        self.client = Client(config, actor=f"dashboard:{default_actor()}")
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.templates.globals["workflow_url"] = workflow_url
        self.templates.globals["action_url"] = action_url

    def page(self, request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
        html = self.templates.get_template(name).render(
            request=request,
            allow_actions=self.allow_actions,
            form_token=self.form_token,
            statuses=STATUSES,
            **context,
        )
        return HTMLResponse(html, status_code=status_code)

    def problem(self, request: Request, status_code: int, title: str, advice: str) -> Response:
        return self.page(request, "error.html", status_code, title=title, advice=advice)


def workflow_url(workflow_id: str, routing_key: str | None = None) -> str:
    """A workflow page's path: the id as one path segment (every character encoded, so an id
    holding '/', '?', '#' or '..' stays one id), and its routing key when it has one (it
    decides where the workflow lives)."""
    path = "/workflows/" + quote(workflow_id, safe="")
    return path + ("?" + urlencode({"key": routing_key}) if routing_key else "")


def action_url(action: str, workflow_id: str, routing_key: str | None = None) -> str:
    path = f"/actions/{action}/" + quote(workflow_id, safe="")
    return path + ("?" + urlencode({"key": routing_key}) if routing_key else "")


def _routing_key(request: Request, d: Dashboard) -> str | None:
    key = request.query_params.get("key") or None
    if key is not None:
        check_identifier(key, what="routing key", max_length=d.config.limits.max_id_length)
    return key


def _dashboard(request: Request) -> Dashboard:
    dashboard: Dashboard = request.app.state.dashboard
    return dashboard


# -- pages ------------------------------------------------------------------------------


async def cluster_page(request: Request) -> Response:
    d = _dashboard(request)
    status = await cluster_status(d.config)
    # A rebalance or a new node since the last page: read the placement again.
    placement = await d.client.refresh_placement(min_version=d.client.placement.version)
    names = [n.name for n in status.nodes]
    colours = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}
    partitions = [(p, placement.owner(p)) for p in range(placement.partition_count)]
    dead = sum(n.workflows.get("dead", 0) for n in status.nodes)
    history = d.history
    throughput = {
        n: [(p.at, p.ended_per_second) for p in points if p.ended_per_second is not None]
        for n, points in history.points.items()
    }
    p99 = {
        n: [(p.at, p.p99_seconds) for p in points if p.p99_seconds is not None]
        for n, points in history.points.items()
    }
    return d.page(
        request,
        "cluster.html",
        status=status,
        colours=colours,
        partitions=partitions,
        dead=dead,
        latest={n: history.latest(n) for n in names},
        sample_seconds=history.interval,
        slowest=history.slowest(),
        throughput_chart=Markup(chart(throughput, colours, unit="ended/s")),
        latency_chart=Markup(chart(p99, colours, unit="s p99")),
    )


def _choice(value: str | None, allowed: tuple[str, ...] | list[str], what: str) -> str | None:
    if value in (None, ""):
        return None
    if value not in allowed:
        raise InvalidInput(f"{what} must be one of {', '.join(allowed)}")
    return value


async def workflows_page(request: Request) -> Response:
    d = _dashboard(request)
    query = request.query_params
    search = (query.get("id") or "").strip()
    if search:
        check_identifier(search, what="workflow id", max_length=d.config.limits.max_id_length)
        return RedirectResponse(workflow_url(search, _routing_key(request, d)), 303)
    await d.client.refresh_placement(min_version=d.client.placement.version)  # nodes added?
    status = _choice(query.get("status"), STATUSES, "status")
    node = _choice(query.get("node"), sorted(d.client.placement.counts()), "node")
    name = query.get("name") or None
    if name is not None:
        check_identifier(name, what="workflow name", max_length=200)
    size_text = query.get("limit") or "50"
    if size_text not in {str(s) for s in PAGE_SIZES}:
        raise InvalidInput(f"limit must be one of {', '.join(map(str, PAGE_SIZES))}")
    since_text = (query.get("since") or "").strip()
    until_text = (query.get("until") or "").strip()
    since = parse_time_bound(since_text, what="since") if since_text else None
    until = parse_time_bound(until_text, what="until") if until_text else None
    check_time_range(since, until, labels=("since", "until"))
    page = await d.client.list(
        status=status,
        name=name,
        node=node,
        limit=int(size_text),
        cursor=query.get("cursor") or None,
        created_since=since,
        created_until=until,
    )
    nodes = {r.workflow_id: d.client.route(r.routing_key or r.workflow_id)[1] for r in page.items}
    filters = {
        k: v
        for k, v in {
            "status": status,
            "name": name,
            "node": node,
            "since": since_text,
            "until": until_text,
        }.items()
        if v
    }
    next_url = None
    if page.next_cursor:
        # "15m" ago moves with the clock: the next page keeps the instant this page used.
        fixed = {k: v.isoformat() for k, v in {"since": since, "until": until}.items() if v}
        next_url = URL("/workflows").include_query_params(
            **{**filters, **fixed}, limit=size_text, cursor=page.next_cursor
        )
    return d.page(
        request,
        "workflows.html",
        page=page,
        nodes=nodes,
        filters=filters,
        node_names=sorted(d.client.placement.counts()),
        limit=size_text,
        page_sizes=PAGE_SIZES,
        next_url=str(next_url) if next_url else None,
    )


async def workflow_page(request: Request) -> Response:
    d = _dashboard(request)
    workflow_id = request.path_params["workflow_id"]
    check_identifier(workflow_id, what="workflow id", max_length=d.config.limits.max_id_length)
    key = _routing_key(request, d)
    record = await d.client.get(workflow_id, routing_key=key)
    steps = await d.client.steps(workflow_id, routing_key=key)
    events = await d.client.events(workflow_id, routing_key=key)
    partition, node = d.client.route(record.routing_key or workflow_id)
    # Time from the previous checkpoint (the first: from the start) to each one.
    durations: dict[int, str] = {}
    previous = record.created_at
    for step in steps:
        if step.recorded_at is not None and previous is not None:
            durations[step.step_seq] = f"{(step.recorded_at - previous).total_seconds():.3f} s"
            previous = step.recorded_at
        else:
            durations[step.step_seq] = ""
    children = [
        (str(step.output["workflow_id"]), step.output.get("routing_key"))
        for step in steps
        if step.step_name.startswith(START_CHILD_STEP_PREFIX) and isinstance(step.output, dict)
    ]
    done = DONE.get(request.query_params.get("done", ""))
    return d.page(
        request,
        "workflow.html",
        record=record,
        steps=steps,
        events=events,
        partition=partition,
        node=node,
        durations=durations,
        abouts={step.step_seq: about(step) for step in steps},
        children=children,
        done=done,
    )


async def failures_page(request: Request) -> Response:
    d = _dashboard(request)
    groups: list[FailureGroup] = []
    unavailable: list[str] = []
    async with ClusterAdmin(d.config) as admin:
        placement = await admin.latest_placement()
        for name in [node.name for node in placement.nodes]:
            try:
                groups += await admin.admin(name).failure_groups(
                    partitions=placement.partitions_of(name)
                )
            except NodeUnavailable:
                unavailable.append(name)
    groups.sort(key=lambda g: (-g.workflows, g.name, g.node))
    return d.page(request, "failures.html", groups=groups, unavailable=unavailable)


# -- actions ----------------------------------------------------------------------------

ACTIONS = {"cancel": "Cancel", "requeue": "Requeue", "signal": "Signal"}
# What an action's outcome says on the workflow page (a code in the URL, fixed text here).
DONE = {
    "cancelled": "Cancelled.",
    "not-cancelled": "Not cancelled: it had already ended.",
    "requeued": "Requeued: it runs again from its checkpoints.",
    "not-requeued": "Not requeued: it is not dead-lettered.",
    "signalled": "Signal sent: a wait for it takes it (now, if one waits).",
    "not-signalled": "Not sent again: a signal with that id was sent before.",
}


async def action_page(request: Request) -> Response:
    """GET: the confirmation form; POST: the action itself."""
    d = _dashboard(request)
    action = request.path_params["action"]
    workflow_id = request.path_params["workflow_id"]
    if action not in ACTIONS:
        return d.problem(
            request, 404, "No such action", "The actions are cancel, requeue and signal."
        )
    check_identifier(workflow_id, what="workflow id", max_length=d.config.limits.max_id_length)
    key = _routing_key(request, d)
    if not d.allow_actions:
        return d.problem(
            request,
            403,
            "Actions are off",
            "This dashboard is read-only. Start it with `shardflow dashboard --allow-actions` "
            "(and a configuration whose user holds the admin role) to cancel, requeue or "
            "signal.",
        )
    record = await d.client.get(workflow_id, routing_key=key)
    if request.method != "POST":  # GET and HEAD: the confirmation
        return d.page(
            request, "confirm.html", record=record, action=action, label=ACTIONS[action], key=key
        )
    form = await request.form()
    sent = str(form.get("form_token", "")).encode()
    if not hmac.compare_digest(sent, d.form_token.encode()):
        return d.problem(
            request, 403, "Stale form", "Open the workflow page again and confirm from there."
        )
    if action == "cancel":
        done = (
            "cancelled" if await d.client.cancel(workflow_id, routing_key=key) else "not-cancelled"
        )
    elif action == "signal":
        done = await _signal(d, workflow_id, key, form)
    else:
        done = (
            "requeued" if await d.client.requeue(workflow_id, routing_key=key) else "not-requeued"
        )
    log.info(
        "dashboard %s of %s from %s: %s",
        action,
        workflow_id,
        request.client.host if request.client else "?",
        done,
        extra={"action": f"dashboard_{action}", "workflow_id": workflow_id},
    )
    url = workflow_url(workflow_id, key)
    return RedirectResponse(url + ("&" if "?" in url else "?") + urlencode({"done": done}), 303)


async def _signal(d: Dashboard, workflow_id: str, key: str | None, form: FormData) -> str:
    """The signal form's fields, checked before anything is sent: a name, a JSON payload
    (empty: none) and an optional id that makes a resend a no-op."""
    name = str(form.get("name", "")).strip()
    check_name(name, what="signal name")
    text = str(form.get("payload", "")).strip()
    try:
        payload = json.loads(text) if text else None
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"the payload is not valid JSON ({exc.msg} at line {exc.lineno}, column "
            f'{exc.colno}); write JSON like {{"approved": true}}, or leave it empty'
        ) from None
    signal_id = str(form.get("signal_id", "")).strip() or None
    try:
        stored = await d.client.signal(
            workflow_id, name, payload, signal_id=signal_id, routing_key=key, audited=True
        )
    except SignalRefused as exc:
        raise InvalidInput(str(exc)) from None
    return "signalled" if stored else "not-signalled"


async def metrics_page(request: Request) -> Response:
    d = _dashboard(request)
    body, content_type = await dashboard_metrics.exposition(d.config)
    return Response(body, media_type=content_type)


async def health(request: Request) -> Response:
    return PlainTextResponse("ok")


# -- errors and the token gate ----------------------------------------------------------


class Guard(BaseHTTPMiddleware):
    """The token gate, and shardflow's errors turned into pages that say what to do."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        d = _dashboard(request)
        gated = d.token is not None and request.url.path not in ("/login", "/health")
        if gated and not _authorized(request, d.token or ""):
            return d.problem(
                request,
                401,
                "Sign in",
                "This dashboard needs its token: send `Authorization: Bearer TOKEN`, or enter "
                "it at /login.",
            )
        try:
            response = await call_next(request)
        except WorkflowNotFound as exc:
            return d.problem(request, 404, "No such workflow", f"{exc}.")
        except InvalidInput as exc:
            return d.problem(request, 400, "Bad request", str(exc))
        except NodeUnavailable as exc:
            return d.problem(
                request,
                503,
                "A node is unavailable",
                f"{exc}. The other nodes' pages still work; retry when it is back.",
            )
        except ShardflowError as exc:
            if "permission denied" in str(exc).lower():
                return d.problem(
                    request,
                    403,
                    "Not allowed",
                    "The dashboard's database user may not do this: give it the admin role "
                    "(`shardflow roles create`, then GRANT shardflow_admin).",
                )
            log.warning("dashboard request failed: %s", exc)
            return d.problem(request, 500, type(exc).__name__, str(exc))
        except Exception:
            log.exception("dashboard bug serving %s", request.url.path)
            return d.problem(
                request,
                500,
                "Something went wrong",
                "The dashboard logged the details; retry, and report it if it persists.",
            )
        return response


# On every answer: no framing (clickjacking of the action buttons), no sniffing, no referrer
# (workflow ids in URLs stay here).
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'; default-src 'self'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class SecurityHeaders(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response


def _authorized(request: Request, token: str) -> bool:
    header = request.headers.get("authorization", "")
    given = header[7:] if header.lower().startswith("bearer ") else request.cookies.get(COOKIE)
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


async def login(request: Request) -> Response:
    d = _dashboard(request)
    if request.method == "GET" or d.token is None:
        return d.page(request, "login.html")
    form = await request.form()
    given = str(form.get("token", ""))
    if not hmac.compare_digest(given.encode(), d.token.encode()):
        return d.problem(request, 401, "Wrong token", "Check the token file the dashboard reads.")
    response = RedirectResponse("/", 303)
    response.set_cookie(
        COOKIE, given, httponly=True, samesite="strict", secure=request.url.scheme == "https"
    )
    return response


def create_app(
    config: ClusterConfig,
    *,
    allow_actions: bool = False,
    token: str | None = None,
    sample_seconds: float = 10.0,
    allowed_hosts: list[str] | None = None,
) -> Starlette:
    """The dashboard app; ``sample_seconds``: how often the charts' history is sampled;
    ``allowed_hosts``: the Host headers it answers (a page of another site that rebinds its
    DNS name to this address is refused); None answers any."""
    dashboard = Dashboard(
        config, allow_actions=allow_actions, token=token, sample_seconds=sample_seconds
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await dashboard.client.connect()
        stopping = asyncio.Event()
        sampler = asyncio.create_task(dashboard.history.run(stopping))
        try:
            yield
        finally:
            stopping.set()
            await sampler
            await dashboard.client.close()

    app = Starlette(
        routes=[
            Route("/", cluster_page, name="cluster"),
            Route("/workflows", workflows_page, name="workflows"),
            Route("/workflows/{workflow_id:path}", workflow_page, name="workflow"),
            Route(
                "/actions/{action:str}/{workflow_id:path}",
                action_page,
                methods=["GET", "POST"],
                name="action",
            ),
            Route("/failures", failures_page, name="failures"),
            Route("/metrics", metrics_page, name="metrics"),
            Route("/login", login, methods=["GET", "POST"], name="login"),
            Route("/health", health),
        ],
        middleware=[
            *(
                [Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)]
                if allowed_hosts
                else []
            ),
            Middleware(SecurityHeaders),
            Middleware(Guard),
        ],
        lifespan=lifespan,
    )
    app.state.dashboard = dashboard
    return app
