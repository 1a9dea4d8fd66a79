"""Locust users that drive a shardflow cluster through the real client.

Every call is reported to Locust's statistics with the request type ``shardflow:<node>``
(the node that owns the workflow), so the table shows latency and failures per node:

- ``start``: start workload W (returns after the durable insert);
- ``start_and_wait``: start W and wait for its durable completion;
- ``status``: read the status of a workflow this user started.

Run against the cluster of $SHARDFLOW_CONFIG, with workers serving shardflow.bench.workloads:

    locust -f locustfiles/shardflow_users.py --headless -u 20 -r 10 -t 30s

(`make load` does all of that on the demo cluster, then `shardflow bench drain` reports how
many of the started workflows completed and what backlog is left.) Workflow ids start with
$SHARDFLOW_LOAD_PREFIX (default ``locust-``). shardflow has no signals yet, so there is no
signal task.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, ClassVar

from locust import User, between, events, task

from shardflow import SyncClient, load_config
from shardflow.bench import workloads

# Every workflow of this run starts with it: `shardflow bench drain PREFIX` counts them.
PREFIX = os.environ.get("SHARDFLOW_LOAD_PREFIX", "locust-")


class _SharedClient:
    """One SyncClient (one event loop thread, one pool per node) per Locust process."""

    lock = threading.Lock()
    client: SyncClient | None = None

    @classmethod
    def get(cls) -> SyncClient:
        with cls.lock:
            if cls.client is None:
                cls.client = SyncClient(load_config(), app=workloads.app)
            return cls.client


@events.quitting.add_listener
def _close_client(**_: Any) -> None:
    if _SharedClient.client is not None:
        _SharedClient.client.close()


class ShardflowUser(User):
    """Starts W, sometimes waits for it, and checks on workflows it started before."""

    wait_time = between(0.005, 0.02)
    result_timeout: ClassVar[float] = 30.0

    def on_start(self) -> None:
        self.shardflow = _SharedClient.get()
        self.started: list[str] = []

    def _report(self, name: str, workflow_id: str, call: Callable[[], Any]) -> None:
        node = self.shardflow.client.route(workflow_id)[1]
        began = time.perf_counter()
        error: BaseException | None = None
        try:
            call()
        except Exception as exc:  # every failure is a Locust failure, with its message
            error = exc
        self.environment.events.request.fire(
            request_type=f"shardflow:{node}",
            name=name,
            response_time=(time.perf_counter() - began) * 1000,
            response_length=0,
            exception=error,
            context={},
        )

    @task(5)
    def start_workflow(self) -> None:
        wf_id = f"{PREFIX}{uuid.uuid4().hex}"
        self._report(
            "start", wf_id, lambda: self.shardflow.start(workloads.w, 1, workflow_id=wf_id)
        )
        self.started.append(wf_id)
        del self.started[:-100]  # remember the latest hundred for status checks

    @task(2)
    def start_and_wait(self) -> None:
        wf_id = f"{PREFIX}{uuid.uuid4().hex}"

        def run() -> None:
            handle = self.shardflow.start(workloads.w, 1, workflow_id=wf_id)
            if handle.result(timeout=self.result_timeout) != 4:
                raise AssertionError(f"workflow {wf_id} returned the wrong result")

        self._report("start_and_wait", wf_id, run)

    @task(3)
    def check_status(self) -> None:
        if not self.started:
            return
        wf_id = random.choice(self.started)
        self._report("status", wf_id, lambda: self.shardflow.status(wf_id))
