"""OpenTelemetry spans for starts, claims, runs, steps, checkpoints and completions.

Off unless configured, with no hard dependency: shardflow uses only the OpenTelemetry API
(`pip install 'shardflow[tracing]'`), and the API does nothing until the application installs
an SDK tracer provider (its own code, or `opentelemetry-instrument shardflow worker ...`).
Without the API package every function here is a no-op.

Across processes the trace follows the workflow: a start stores the W3C trace context of its
span with the workflow row (``trace_context``, JSON of the propagation headers; NULL when
nothing is traced), and the worker that claims the workflow continues that trace with its run
span. Each run span carries the workflow id (``shardflow.workflow_id``), so every run of one
workflow (after a crash, after a sleep) is found by it as well; a claim span links to the
traces of the workflows it took. Child workflows continue their parent's run span.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

try:
    from opentelemetry import trace
    from opentelemetry.context import Context
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    _W3C = TraceContextTextMapPropagator()
except ImportError:  # tracing not installed: every function below does nothing
    trace = None  # type: ignore[assignment]

WORKFLOW_ID = "shardflow.workflow_id"
WORKFLOW = "shardflow.workflow"
NODE = "shardflow.node"


def enabled() -> bool:
    """Whether an SDK tracer provider is installed (otherwise the API's proxy is in place and
    every span would be a no-op: skip them, they are not free on the hot path)."""
    return trace is not None and not isinstance(
        trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider
    )


def _tracer() -> Any:
    # The provider may be installed after import (opentelemetry-instrument, the app's own
    # set-up): look it up at each use; the API caches what it can.
    return trace.get_tracer("shardflow")


def current_context() -> str | None:
    """The trace context of the current span, to store with a workflow; None when no span
    is recording (no SDK configured, or nothing traced here): then nothing is stored."""
    if not enabled() or not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)  # traceparent and tracestate only: a caller's baggage is not stored
    return json.dumps(carrier, sort_keys=True) if carrier else None


def _parent(stored: str | None) -> Any:
    """The OpenTelemetry context a stored trace context names (None: the current one)."""
    if not stored:
        return None
    try:
        carrier = json.loads(stored)
    except ValueError:
        return None  # written by something else: start a fresh trace rather than fail a run
    return _W3C.extract(carrier) if isinstance(carrier, dict) else None


@contextlib.contextmanager
def span(
    name: str, *, attributes: dict[str, Any], parent: str | None = None, kind: str = "internal"
) -> Iterator[None]:
    """A span around the block (the current one for code inside it); with ``parent``, a child
    of that stored trace context. Exceptions are recorded on it and re-raised."""
    if not enabled():
        yield
        return
    with _tracer().start_as_current_span(
        name,
        context=_parent(parent),
        kind=_KINDS[kind],
        attributes={k: v for k, v in attributes.items() if v is not None},
    ):
        yield


def claim_span(node: str, started_ns: int, claimed: Sequence[tuple[str, str | None]]) -> None:
    """Record a claim that began at ``started_ns`` (time.time_ns) and took ``claimed``
    (workflow id, stored trace context): a span of its own, linked to each workflow's trace."""
    if not claimed or not enabled():
        return
    links = []
    for _, stored in claimed:
        parent = _parent(stored)
        if parent is not None:
            context = trace.get_current_span(parent).get_span_context()
            if context.is_valid:
                links.append(trace.Link(context))
    claim = _tracer().start_span(
        "shardflow.claim",
        context=Context(),  # a root of its own: one claim serves many workflows
        kind=trace.SpanKind.CONSUMER,
        start_time=started_ns,
        links=links,
        attributes={NODE: node, "shardflow.claimed": len(claimed)},
    )
    claim.end(end_time=time.time_ns())


_KINDS: dict[str, Any] = (
    {
        "internal": trace.SpanKind.INTERNAL,
        "producer": trace.SpanKind.PRODUCER,
        "consumer": trace.SpanKind.CONSUMER,
        "client": trace.SpanKind.CLIENT,
    }
    if trace is not None
    else {}
)
