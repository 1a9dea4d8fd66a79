"""Workload W on DBOS, for the side-by-side comparison (benchmarks/compare_dbos.py).

Runs in its own virtualenv (DBOS is not a shardflow dependency). Each of --processes
processes launches DBOS, starts its share of --count workflows in-process as fast as it can,
and waits for all of them; prints one JSON line: workflows, seconds, workflows_per_second.
The database URL comes from DBOS_BENCH_URL (no password in it: libpq reads PGPASSFILE).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time

from dbos import DBOS, DBOSConfig


def configure() -> None:
    config: DBOSConfig = {
        "name": "shardflow-compare",
        "system_database_url": os.environ["DBOS_BENCH_URL"],
        "log_level": "WARNING",
        # DBOS runs each started workflow on a thread of its executor (by default
        # min(32, cores + 4) threads): give it as many threads, and connections, as
        # shardflow's workers have slots, or it waits on its own executor.
        "max_executor_threads": int(os.environ.get("DBOS_BENCH_THREADS", "64")),
        "sys_db_pool_size": int(os.environ.get("DBOS_BENCH_POOL", "64")),
    }
    DBOS(config=config)


@DBOS.step()
def plus_one(n: int) -> int:
    return n + 1


@DBOS.workflow()
def w(n: int) -> int:
    return plus_one(plus_one(plus_one(n)))


def run_share(
    count: int, barrier: multiprocessing.synchronize.Barrier, out: multiprocessing.Queue
) -> None:  # type: ignore[name-defined]
    configure()
    DBOS.launch()
    barrier.wait()
    began = time.time()
    handles = [DBOS.start_workflow(w, i) for i in range(count)]
    for i, handle in enumerate(handles):
        assert handle.get_result() == i + 3
    out.put((began, time.time()))
    DBOS.destroy()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=4000)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    # Create the system database and its tables once, before the timed processes start.
    setup = multiprocessing.Process(target=_setup)
    setup.start()
    setup.join()
    barrier = multiprocessing.Barrier(args.processes)
    out: multiprocessing.Queue = multiprocessing.Queue()
    share = args.count // args.processes
    procs = [
        multiprocessing.Process(target=run_share, args=(share, barrier, out))
        for _ in range(args.processes)
    ]
    for p in procs:
        p.start()
    spans = [out.get() for _ in procs]
    for p in procs:
        p.join()
    seconds = max(end for _, end in spans) - min(begin for begin, _ in spans)
    total = share * args.processes
    print(
        json.dumps(
            {
                "workflows": total,
                "seconds": round(seconds, 3),
                "workflows_per_second": round(total / seconds, 1),
            }
        )
    )


def _setup() -> None:
    configure()
    DBOS.launch()
    DBOS.destroy()


if __name__ == "__main__":
    main()
