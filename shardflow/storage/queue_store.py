"""Admissions of a queue's waiting workflows on one node (sql/queries/queues.sql)."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from shardflow.queues.admission import Usage, Waiting, choose, room, saturated_keys
from shardflow.queues.queue import Queue
from shardflow.storage.connector import NodeConnector
from shardflow.storage.records import ClaimedWorkflow

# Waiting workflows read per admitted slot: enough that a few full concurrency keys among the
# first ones (skipped by the choice) rarely leave a slot empty.
READ_AHEAD = 4


@dataclass(frozen=True, kw_only=True)
class Admitted:
    """One admission's outcome."""

    claimed: list[ClaimedWorkflow] = field(default_factory=list)
    # Workflows were left waiting because the queue's limits were full (not for lack of
    # this worker's slots): the next admission is worth it once a slot frees.
    held_back: bool = False
    # Seconds until the rate window lets the next one in (None: not rate-limited now).
    rate_frees_in: float | None = None
    # Another worker was admitting this queue on this node: nothing was read or admitted.
    busy: bool = False


class QueueStore:
    """Admits waiting workflows of an app's queues on one node, under their limits."""

    def __init__(
        self,
        connector: NodeConnector,
        partitions: Callable[[], list[int]],
        *,
        app_name: str,
        workflow_names: list[str],
    ):
        self.db = connector
        self.app = app_name
        # Only workflows this worker's code defines are admitted (as claims take only those).
        self.names = sorted(workflow_names)
        # Citus: the partitions whose shards this node holds now (the claim store's).
        self._partitions = partitions

    async def admit(self, queue: Queue, *, slots: int, owner: str, lease: timedelta) -> Admitted:
        """Lease to ``owner`` up to ``slots`` waiting workflows of ``queue`` that its limits
        let in on this node, in one transaction holding the node's lock for the queue."""
        scope: dict[str, Any] = {
            "app": self.app,
            "queue": queue.name,
            "partitions": self._partitions(),
        }
        period = timedelta(seconds=queue.period_seconds or 0.0)
        # The schema too: two clusters may share a database.
        lock = {"lock": f"shardflow.queue:{self.db.schema}:{self.app}:{queue.name}"}
        async with self.db.transaction() as conn:
            (answer,) = await self.db.fetch(conn, "queue_lock", lock)
            if not answer["locked"]:
                return Admitted(busy=True)
            held = {
                r["concurrency_key"]: int(r["held"])
                for r in await self.db.fetch(conn, "queue_slots_held", scope)
            }
            admitted, frees_in = 0, None
            if queue.rate is not None:
                (window,) = await self.db.fetch(
                    conn, "queue_admitted_recently", {**scope, "period": period}
                )
                admitted = int(window["admitted"])
                # An empty window frees a period after the first admission into it.
                frees_in = (
                    period.total_seconds()
                    if window["frees_in"] is None
                    else float(window["frees_in"])
                )
            usage = Usage(held_by_key=held, admitted_in_window=admitted)
            limit = room(queue, usage, slots)
            full_keys = saturated_keys(queue, usage)
            waiting: list[Waiting] = []
            claimed: list[ClaimedWorkflow] = []
            if limit > 0:
                rows = await self.db.fetch(
                    conn,
                    "queue_waiting",
                    {
                        **scope,
                        "names": self.names,
                        "period": period,
                        "saturated": full_keys,
                        "limit": limit * READ_AHEAD,
                    },
                )
                waiting = [Waiting(**r) for r in rows]
                chosen = choose(queue, usage, waiting, slots)
                claimed = await self._lease(conn, queue, chosen, owner=owner, lease=lease)
        rate_full = queue.rate is not None and admitted + len(claimed) >= queue.rate
        # The queue's concurrency or per-key limits, not this worker's slots nor the rate
        # window (it frees at rate_frees_in), stopped the admission: a slot freed may let the
        # next one in. Waiters of full keys were not even read.
        held_back = (
            not rate_full
            and len(claimed) < slots
            and (limit == 0 or len(waiting) > len(claimed) or bool(full_keys))
        )
        return Admitted(
            claimed=claimed,
            held_back=held_back,
            rate_frees_in=max(0.0, frees_in) if rate_full and frees_in is not None else None,
        )

    async def _lease(
        self, conn: Any, queue: Queue, chosen: list[Waiting], *, owner: str, lease: timedelta
    ) -> list[ClaimedWorkflow]:
        if not chosen:
            return []
        token = str(uuid.uuid4())
        leased = {
            "owner": owner,
            "lease": lease,
            "lease_token": token,
            "app": self.app,
            "queue": queue.name,
        }
        if self.db.dialect != "citus":  # one statement for every partition
            ordered = sorted(chosen, key=lambda w: (w.partition, w.workflow_id))
            rows = await self.db.fetch(
                conn,
                "queue_admit_many",
                {
                    **leased,
                    "partition_list": [w.partition for w in ordered],
                    "workflow_id_list": [w.workflow_id for w in ordered],
                },
            )
            return [ClaimedWorkflow(lease_token=token, **row) for row in rows]
        by_partition: dict[int, list[str]] = defaultdict(list)
        for work in chosen:
            by_partition[work.partition].append(work.workflow_id)
        answers = await self.db.fetch_many(
            conn,
            "queue_admit",
            [
                {**leased, "partition": partition, "workflow_ids": ids}
                for partition, ids in sorted(by_partition.items())
            ],
        )
        return [ClaimedWorkflow(lease_token=token, **row) for rows in answers for row in rows]
