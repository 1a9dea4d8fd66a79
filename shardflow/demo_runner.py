"""``shardflow demo``: worker processes plus a burst of demo workflows, summarised per node."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from collections import Counter
from typing import Any

from shardflow.client import Client
from shardflow.config import ClusterConfig
from shardflow.demo import app, process_order


async def run_demo(
    config: ClusterConfig, config_path: str | None, *, count: int, workers: int, concurrency: int
) -> str:
    run_id = uuid.uuid4().hex[:8]
    env = dict(os.environ)
    if config_path:
        env["SHARDFLOW_CONFIG"] = config_path
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "shardflow",
            "worker",
            "--app",
            "shardflow.demo:app",
            "--concurrency",
            str(concurrency),
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
        )
        for _ in range(workers)
    ]
    try:
        async with Client(config, app=app) as client:
            began = time.monotonic()
            ids = [f"demo-{run_id}-{i}" for i in range(count)]
            orders: list[dict[str, Any]] = [
                {"n": i, "sku": f"sku-{i % 7}", "quantity": 1 + i % 3} for i in range(count)
            ]
            handles = []
            for start in range(0, count, 100):  # bounded concurrency for the starts
                handles += await asyncio.gather(
                    *(
                        client.start(process_order, order, workflow_id=wf_id)
                        for wf_id, order in zip(
                            ids[start : start + 100], orders[start : start + 100], strict=True
                        )
                    )
                )
            started = time.monotonic() - began
            outputs = await asyncio.gather(
                *(h.result(timeout=300) for h in handles), return_exceptions=True
            )
            elapsed = time.monotonic() - began
            per_node: Counter[str] = Counter(client.route(i)[1] for i in ids)
            done_per_node: Counter[str] = Counter(
                client.route(i)[1]
                for i, out in zip(ids, outputs, strict=True)
                if not isinstance(out, BaseException)
            )
            retried = sum(1 for o in orders if o["n"] % 5 == 0)
            steps = await client.steps(ids[0])
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        await asyncio.gather(*(p.wait() for p in procs))

    failed = [o for o in outputs if isinstance(o, BaseException)]
    lines = [
        f"shardflow demo: {count} x process_order (3 steps + durable sleep; every 5th retries "
        f"a step) on {len(config.nodes)} nodes, {workers} worker processes",
        "",
        f"{'node':<10} {'workflows':>10} {'completed':>10}",
    ]
    for node in sorted(per_node):
        lines.append(f"{node:<10} {per_node[node]:>10} {done_per_node[node]:>10}")
    lines += [
        f"{'total':<10} {count:>10} {count - len(failed):>10}",
        "",
        f"started in {started:.2f}s; all finished in {elapsed:.2f}s "
        f"= {count / elapsed:.0f} workflows/s end to end",
        f"steps retried durably: {retried}; checkpoints of {ids[0]}: "
        + ", ".join(f"{s.step_seq}:{s.step_name}" for s in steps),
    ]
    if failed:
        lines.append(f"FAILED: {len(failed)} workflows, first error: {failed[0]!r}")
        raise SystemExit("\n".join(lines))
    return "\n".join(lines)
