"""Run traced workflows in a process of its own and write the finished spans as JSON.

Used by tests/test_tracing.py: the OpenTelemetry SDK's tracer provider is global to a
process, so the probe installs one (with an in-memory exporter) here, not in the test process.

    python -m tests.trace_probe CONFIG.toml OUT.json RUN_ID
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shardflow import Client, Worker, load_config
from tests import apps


async def main(config_path: str, out: Path, run_id: str) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    config = load_config(config_path)
    async with Worker(apps.app, config), Client(config, app=apps.app) as client:
        with trace.get_tracer("probe").start_as_current_span("request"):
            plain = await client.start(apps.three_steps, 1, workflow_id=f"{run_id}-steps")
            retried = await client.start(apps.retrying, 1, workflow_id=f"{run_id}-retry")
            parent = await client.start(
                apps.fan_out, {"count": 2, "spread": True}, workflow_id=f"{run_id}-parent"
            )
        assert await plain.result(timeout=30) == 4
        assert (await retried.result(timeout=30)).startswith("ok after 2")
        assert await parent.result(timeout=60) == 3  # leaves return i + 1: 1 + 2
    provider.force_flush()
    spans = [
        {
            "name": s.name,
            "trace_id": f"{s.context.trace_id:032x}",
            "span_id": f"{s.context.span_id:016x}",
            "parent_id": f"{s.parent.span_id:016x}" if s.parent else None,
            "kind": s.kind.name,
            "status": s.status.status_code.name,
            "attributes": dict(s.attributes or {}),
            "events": [e.name for e in s.events],
            "links": [f"{link.context.span_id:016x}" for link in s.links],
        }
        for s in exporter.get_finished_spans()
    ]
    out.write_text(json.dumps(spans, indent=1))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], Path(sys.argv[2]), sys.argv[3]))
