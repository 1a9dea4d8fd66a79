"""Dashboard page times with many workflows (issue 12): `make bench-dashboard`.

A fresh local cluster of --nodes nodes is filled with --workflows finished workflows (three
checkpoints each, written straight into their partitions) plus --failures that really failed
(run by a worker); then every page of the real app is requested --repeat times in this process
(Starlette's test client: the app, its middleware and its database reads, without a network
hop) and its median, p95 and maximum are reported. The target is 300 ms per page.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import time
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from shardflow import App, Client, Worker, WorkflowContext, WorkflowFailed
from shardflow.bench.common import bench_directory, percentile
from shardflow.cluster.admin import init_cluster
from shardflow.cluster.local import LocalCluster
from shardflow.cluster.membership import ClusterAdmin
from shardflow.dashboard import create_app

TARGET_MS = 300.0
app = App("dashboard-bench")


@app.step
def refuse(order: int) -> None:
    raise ValueError(f"order {order} refused")


@app.workflow
async def checkout(ctx: WorkflowContext, order: int) -> None:
    await refuse(order)


async def fill(local: LocalCluster, nodes: int, workflows: int, failures: int) -> Any:
    config = local.create(nodes=nodes, partition_count=256, schema="shardflow")
    placement = await init_cluster(config)
    per_partition = max(1, workflows // placement.partition_count)
    async with ClusterAdmin(config) as admin:

        async def fill_node(node: str) -> None:
            for partition in placement.partitions_of(node):
                await admin.bench(node).fill(partition, per_partition)

        await asyncio.gather(*(fill_node(n.name) for n in placement.nodes))
    async with Client(config, app=app) as client, Worker(app, config):
        handles = await client.start_many(checkout, list(range(failures)))
        for handle in handles:
            with contextlib.suppress(WorkflowFailed):
                await handle.result(timeout=120)
    return config, per_partition * placement.partition_count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--workflows", type=int, default=200_000)
    parser.add_argument("--failures", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path("bench-results/dashboard.json"))
    args = parser.parse_args()
    local = LocalCluster(bench_directory(None) / "cluster")
    try:
        config, stored = asyncio.run(fill(local, args.nodes, args.workflows, args.failures))
        results = []
        with TestClient(create_app(config)) as web:
            first = web.get("/workflows", params={"limit": "50"}).text
            cursor = first.split('id="next" href="')[1].split('"')[0].replace("&amp;", "&")
            example = first.split('<a href="/workflows/')[1].split('"')[0]
            pages = {
                "cluster": "/",
                "workflows": "/workflows",
                "workflows, page 2": cursor,
                "workflows, failed": "/workflows?status=failed",
                "workflows, none match": "/workflows?status=cancelled",
                "workflows, one node": "/workflows?node=node2",
                "workflow": f"/workflows/{example}",
                "failures": "/failures",
                "metrics": "/metrics",
            }
            for name, path in pages.items():
                assert web.get(path).status_code == 200, path  # warm: pools open, plans cached
                times = []
                for _ in range(args.repeat):
                    began = time.perf_counter()
                    answer = web.get(path)
                    times.append((time.perf_counter() - began) * 1000)
                    assert answer.status_code == 200, path
                results.append(
                    {
                        "page": name,
                        "path": path,
                        "median_ms": round(statistics.median(times), 1),
                        "p95_ms": round(percentile(times, 0.95), 1),
                        "max_ms": round(max(times), 1),
                    }
                )
    finally:
        local.destroy()
    summary = {
        "nodes": args.nodes,
        "workflows": stored + args.failures,
        "repeat": args.repeat,
        "target_ms": TARGET_MS,
        "pages": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"dashboard pages, {summary['workflows']:,} workflows on {args.nodes} nodes:")
    for r in results:
        verdict = "ok" if r["p95_ms"] < TARGET_MS else "SLOW"
        print(
            f"  {r['page']:<22} median {r['median_ms']:>7.1f} ms  p95 {r['p95_ms']:>7.1f} ms  "
            f"max {r['max_ms']:>7.1f} ms  {verdict}"
        )


if __name__ == "__main__":
    main()
