"""Worker-side operations on one node: claim, checkpoint, finish, lease upkeep, reaping.

Every state change is a guarded statement naming the partition, the expected status, the
lease token (unexpired) and the partition fence. Losing a race is a False return, not an
exception: the worker then drops the workflow, whoever holds it now carries on.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable, Hashable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg

from shardflow.errors import NodeUnavailable, WorkflowConflict
from shardflow.storage.batcher import WriteBatcher
from shardflow.storage.connector import NodeConnector
from shardflow.storage.queries import work_channel
from shardflow.storage.records import ClaimedWorkflow, QueueDepth, StepRecord


@dataclass(frozen=True)
class Progress:
    """One workflow's rows in a progress flush: checkpoints, and maybe its terminal state."""

    checkpoints: list[dict[str, Any]]
    finish: dict[str, Any] | None

    def keys(self) -> list[Hashable]:
        """(partition, workflow_id, step_seq) per checkpoint, step_seq -1 for the end: a
        workflow id may exist in two partitions (different routing keys)."""
        keys: list[Hashable] = [
            (c["partition"], c["workflow_id"], c["step_seq"]) for c in self.checkpoints
        ]
        if self.finish is not None:
            keys.append((self.finish["partition"], self.finish["workflow_id"], -1))
        return keys


# The delay of a wait for a signal without a timeout: due only when the signal wakes it
# (a finite time: PostgreSQL 15 cannot subtract an infinite timestamp).
UNTIL_SIGNALLED = timedelta(days=36500)


class WorkerStore:
    """The claim loop's, runner's, heartbeat's and reaper's queries for one node.

    Claims take only workflows of ``app_name`` whose name is in ``workflow_names`` (what the
    worker's code can run); the heartbeat's store, which claims nothing, needs neither.
    """

    def __init__(
        self,
        connector: NodeConnector,
        *,
        app_name: str = "",
        workflow_names: Sequence[str] = (),
        on_group_commit: Callable[[int], None] | None = None,
    ):
        self.db = connector
        self._runs = {"app": app_name, "names": sorted(workflow_names)}
        # Citus: the partitions whose shards this node holds (from the placement). Claims,
        # the reaper and timers look only there; plain nodes use their ownership rows.
        self.partitions: list[int] = []
        # Called after a run wrote to this node's outbox: wakes the worker's relay.
        self.on_outbox: Callable[[], None] | None = None
        # Where the next backlog walk begins: just after the partition the previous one ended
        # in, so claims visit partitions in strict rotation (see claim_ready in worker.sql).
        self._walk_from = 0
        # Group commit of what every workflow writes: checkpoints and its terminal state.
        self._progress: WriteBatcher[Progress] = WriteBatcher(
            self._write_progress, keys=Progress.keys, on_batch=on_group_commit
        )

    @property
    def node(self) -> str:
        return self.db.name

    @property
    def _citus(self) -> bool:
        return self.db.dialect == "citus"

    @property
    def _scope(self) -> dict[str, Any]:
        """What every claim-side query is limited to: this worker's app and names and, on
        Citus, this node's partitions."""
        return {**self._runs, "partitions": self.partitions}

    async def next_due_seconds(self) -> float | None:
        """Seconds until the earliest pending workflow is due (negative: overdue; None: none)."""
        rows = await self.db.run("next_due_seconds", self._scope)
        seconds = rows[0]["seconds"] if rows else None
        return None if seconds is None else float(seconds)

    async def queue_depth(self) -> QueueDepth:
        """This node's pending workflows, every app (on Citus: of its partitions)."""
        rows = await self.db.run("queue_depth", {"partitions": self.partitions})
        return QueueDepth(**rows[0])

    async def suspect_partitions(self) -> list[int]:
        """Partitions with runnable suspects: workflows whose worker died while running them."""
        return [r["partition"] for r in await self.db.run("suspect_partitions", self._scope)]

    async def claim(
        self, *, partition: int, limit: int, owner: str, lease: timedelta, suspect: bool = False
    ) -> list[ClaimedWorkflow]:
        """Lease up to ``limit`` runnable workflows of one partition (none if not owned).

        ``suspect`` claims among workflows whose lease expired before (to run them alone).
        """
        token = str(uuid.uuid4())
        rows = await self.db.run(
            "claim",
            {
                **self._runs,
                "partition": partition,
                "limit": limit,
                "owner": owner,
                "lease": lease,
                "lease_token": token,
                "suspect": suspect,
            },
        )
        return [ClaimedWorkflow(partition=partition, lease_token=token, **row) for row in rows]

    async def claim_ready(
        self, *, limit: int, owner: str, lease: timedelta, backlog: bool = True
    ) -> list[ClaimedWorkflow]:
        """Lease up to ``limit`` runnable workflows of the partitions this node owns (no
        suspects) in one statement. On Citus: the runnable partitions, then ``claim_from``
        (the claim loop saves the first read by following notifications instead).

        ``backlog``: visit partitions in rotation, each oldest first (cheap when much is
        runnable); otherwise take the node's oldest (cheap when little is).
        """
        if self._citus:
            candidates = await self.runnable_partitions(limit=limit)
            claimed, _ = await self.claim_from(candidates, limit=limit, owner=owner, lease=lease)
            return claimed
        token = str(uuid.uuid4())
        start = self._walk_from
        rows = await self.db.run(
            "claim_ready" if backlog else "claim_oldest",
            {
                **self._runs,
                "limit": limit,
                "owner": owner,
                "lease": lease,
                "lease_token": token,
                "start": start,
            },
        )
        claimed = [ClaimedWorkflow(lease_token=token, **row) for row in rows]
        if backlog:
            self._walk_on(start, [work.partition for work in claimed])
        return claimed

    def _walk_on(self, start: int, visited: list[int]) -> None:
        """Begin the next walk after the last of ``visited`` in the order a walk from
        ``start`` took them (upwards from ``start``, then from the lowest partition)."""
        if not visited:
            return
        from_start = [p for p in visited if p >= start]
        self._walk_from = max(from_start or visited) + 1

    @property
    def claims_by_partition(self) -> bool:
        """Citus: claims go one partition at a time (see ``claim_from``), not node-wide."""
        return self._citus

    async def runnable_partitions(self, *, limit: int) -> list[int]:
        """Citus: which of this node's partitions have runnable work for this worker, oldest
        first (no locks). A read across shards: the claim loop asks it once per poll
        interval, and otherwise claims where notifications and earlier claims point."""
        if not self.partitions:
            return []
        rows = await self.db.run("runnable_partitions", {**self._scope, "limit": limit})
        return [int(r["partition"]) for r in rows]

    async def claim_from(
        self, partitions: list[int], *, limit: int, owner: str, lease: timedelta
    ) -> tuple[list[ClaimedWorkflow], list[int]]:
        """Citus: claim up to ``limit`` from ``partitions`` in rotation (as claim_ready's
        walk), one single-partition statement at a time, until the limit is reached. Returns
        what was claimed, and the partitions that may hold more (those that filled their
        share, and those not tried)."""
        claimed: list[ClaimedWorkflow] = []
        maybe_more: list[int] = []
        start = self._walk_from
        ordered = sorted(set(partitions) & set(self.partitions), key=lambda p: (p < start, p))
        for i, partition in enumerate(ordered):
            left = limit - len(claimed)
            if left <= 0:
                maybe_more.extend(ordered[i:])
                break
            got = await self.claim(partition=partition, limit=left, owner=owner, lease=lease)
            claimed.extend(got)
            if len(got) == left:
                maybe_more.append(partition)
        self._walk_on(start, [work.partition for work in claimed])
        return claimed, maybe_more

    async def steps(self, partition: int, workflow_id: str) -> list[StepRecord]:
        rows = await self.db.run(
            "workflow_steps", {"partition": partition, "workflow_id": workflow_id}
        )
        return [StepRecord(**r) for r in rows]

    async def record_step_in(
        self,
        conn: psycopg.AsyncConnection[Any],
        work: ClaimedWorkflow,
        *,
        step_seq: int,
        step_name: str,
        output: str | None,
        attempts: int,
    ) -> bool:
        """Write a transactional step's checkpoint inside its transaction on ``conn``;
        False if the lease or the partition was lost (the caller then rolls back).

        ``output`` is JSON text, already validated by the engine.
        """
        params = {
            **_lease_key(work),
            "step_seq": step_seq,
            "step_name": step_name,
            "status": "succeeded",
            "output": output,
            "error": None,
            "attempts": attempts,
        }
        return bool(await self.db.fetch(conn, "step_record", params))

    async def write_progress(
        self,
        work: ClaimedWorkflow,
        checkpoints: list[dict[str, Any]],
        finish: dict[str, Any] | None,
    ) -> bool:
        """Write a workflow's checkpoints (step_seq, step_name, status, output, error,
        attempts) and, if ``finish`` (status, output, error), its terminal state (and when it
        may be removed, from the retention its start recorded): all in one commit, shared with
        other workflows'. False if the lease or the partition was lost."""
        key = _lease_key(work)
        return await self._progress.submit(
            Progress(
                checkpoints=[{**key, **c} for c in checkpoints],
                finish={**key, **finish} if finish is not None else None,
            )
        )

    async def _write_progress(self, batch: list[Progress]) -> set[Hashable]:
        checkpoints = [c for p in batch for c in p.checkpoints]
        finishes = [p.finish for p in batch if p.finish is not None]
        if self._citus:
            return await self._write_progress_by_partition(checkpoints, finishes)
        params = {
            **_columns(checkpoints, _CHECKPOINT_COLUMNS),
            **{f"fin_{k}": v for k, v in _columns(finishes, _FINISH_COLUMNS).items()},
        }
        rows = await self.db.run("progress_write_many", params)
        return {(r["partition"], r["workflow_id"], r["step_seq"]) for r in rows}

    async def _write_progress_by_partition(
        self, checkpoints: list[dict[str, Any]], finishes: list[dict[str, Any]]
    ) -> set[Hashable]:
        """Citus: per partition (ascending, like the plain statement's locks), lock the rows
        whose lease holds, then write theirs; all in one transaction, one commit."""
        rows = [*checkpoints, *finishes]
        partitions = sorted({r["partition"] for r in rows})
        async with self.db.transaction() as conn:
            held: set[tuple[int, str, str]] = set()
            for answer in await self.db.fetch_many(
                conn,
                "progress_lock_partition",
                [
                    {
                        "partition": p,
                        "workflow_ids": sorted(
                            {r["workflow_id"] for r in rows if r["partition"] == p}
                        ),
                    }
                    for p in partitions
                ],
            ):
                held |= {(r["partition"], r["workflow_id"], r["lease_token"]) for r in answer}
            in_order = sorted(checkpoints, key=lambda c: (c["partition"], c["workflow_id"]))
            writes: list[tuple[str, dict[str, Any]]] = [
                ("progress_step_row", c) for c in in_order if (c["partition"], *_lease(c)) in held
            ] + [
                ("progress_finish_row", f) for f in finishes if (f["partition"], *_lease(f)) in held
            ]
            answers = await self.db.fetch_each(conn, writes)
            return {
                (r["partition"], r["workflow_id"], r["step_seq"]) for rows in answers for r in rows
            }

    def step_transaction(self) -> AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]:
        """A connection inside one transaction, for a transactional step and its checkpoint.

        Committed when the block exits cleanly, rolled back when it raises.
        """
        return self.db.transaction()

    async def release(
        self,
        work: ClaimedWorkflow,
        *,
        delay: timedelta | None,
        retry_step_seq: int | None = None,
        retry_attempts: int = 0,
        error: str | None = None,
        waiting_for: str | None = None,
        seen_signal_seq: int | None = None,
    ) -> bool | None:
        """Give a held workflow back as pending until ``delay`` from the database's now
        (``None``: until a signal ``waiting_for`` arrives). None if it was no longer held;
        True if it is due at once (a signal arrived since the run saw ``seen_signal_seq``)."""
        rows = await self.db.run(
            "workflow_release",
            {
                **_lease_key(work),
                "delay": UNTIL_SIGNALLED if delay is None else delay,
                "retry_step_seq": retry_step_seq,
                "retry_attempts": retry_attempts,
                "error": error,
                "waiting_for": waiting_for,
                "seen_signal_seq": seen_signal_seq,
            },
        )
        return bool(rows[0]["due"]) if rows else None

    async def unread_signal(
        self,
        conn: psycopg.AsyncConnection[Any],
        work: ClaimedWorkflow,
        *,
        name: str,
        signal_ids: list[str] | None = None,
        peek: bool = False,
    ) -> tuple[int, str | None, Any] | None:
        """In one snapshot: how many signals the workflow was ever sent, and the id and
        payload of its oldest unread signal ``name`` (only among ``signal_ids`` if given;
        ``peek``: read ones count too), (None, None) if there is none. None when the
        workflow is no longer on this node (moved)."""
        rows = await self.db.fetch(
            conn,
            "signal_unread",
            {
                "partition": work.partition,
                "workflow_id": work.workflow_id,
                "name": name,
                "signal_ids": signal_ids,
                "peek": peek,
            },
        )
        if not rows:
            return None
        payload = rows[0]["payload"]
        return (
            int(rows[0]["signal_seq"]),
            rows[0]["signal_id"],
            None if payload is None else json.loads(payload),
        )

    async def mark_signal_received(
        self,
        conn: psycopg.AsyncConnection[Any],
        work: ClaimedWorkflow,
        *,
        signal_id: str,
        step_seq: int,
    ) -> bool:
        """Mark a signal read by the wait at ``step_seq`` (in that wait's checkpoint
        transaction); False if it was read already."""
        params = {
            "partition": work.partition,
            "workflow_id": work.workflow_id,
            "signal_id": signal_id,
            "step_seq": step_seq,
        }
        return bool(await self.db.fetch(conn, "signal_receive", params))

    async def insert_child_in(
        self, conn: psycopg.AsyncConnection[Any], work: ClaimedWorkflow, start: dict[str, Any]
    ) -> None:
        """Insert a child on its parent's partition, in the parent's checkpoint transaction
        (the client's insert, fenced by the partition's ownership row).
        An existing row with that id must be this parent's child (a replay never gets here
        for a recorded start), else WorkflowConflict."""
        key = {"partition": start["partition"], "workflow_id": start["workflow_id"]}
        timeout = start["timeout"]
        created = await self.db.fetch(
            conn,
            "workflow_insert",
            {
                **key,
                "name": start["name"],
                "app": start["app"],
                "routing_key": start["routing_key"],
                "input": json.dumps(start["input"], ensure_ascii=False),
                "timeout": None if timeout is None else timedelta(seconds=timeout),
                "parent_id": start["parent_id"],
                "parent_key": start["parent_key"],
                "trace_context": start.get("trace_context"),
                "retention": start.get("retention"),
                "app_version": start.get("app_version"),
                "queue": start.get("queue"),
                "priority": 0,
                "concurrency_key": None,
            },
        )
        if created:
            return
        existing = await self.db.fetch(conn, "child_existing", key)
        if existing and (existing[0]["name"], existing[0]["parent_id"]) == (
            start["name"],
            start["parent_id"],
        ):
            return
        raise WorkflowConflict(
            f"child workflow id {start['workflow_id']!r} is taken by another workflow; pass "
            "start_child(..., workflow_id=...) an unused id"
        )

    async def send_in(
        self,
        conn: psycopg.AsyncConnection[Any],
        work: ClaimedWorkflow,
        *,
        message_id: str,
        kind: str,
        body: dict[str, Any],
    ) -> None:
        """Queue a message to another partition in the sender's transaction (the relay
        delivers it after the commit)."""
        await self.db.fetch(
            conn,
            "outbox_put",
            {
                "partition": work.partition,
                "message_id": message_id,
                "kind": kind,
                "body": json.dumps(body, ensure_ascii=False),
            },
        )

    async def announce(self, partition: int, *, local: bool) -> None:
        """After a commit that created work: a child on this node (``local``) wakes the
        node's claim loops (NOTIFY naming its partition); an outbox message wakes this
        worker's relay of the node."""
        if local:
            await self.db.run(
                "notify_work", {"channel": work_channel(self.db.schema), "payload": str(partition)}
            )
        elif self.on_outbox is not None:
            self.on_outbox()

    async def set_event_in(
        self,
        conn: psycopg.AsyncConnection[Any],
        work: ClaimedWorkflow,
        *,
        key: str,
        value: str | None,
        step_seq: int,
    ) -> None:
        await self.db.fetch(
            conn,
            "event_set",
            {
                "partition": work.partition,
                "workflow_id": work.workflow_id,
                "key": key,
                "value": value,
                "step_seq": step_seq,
            },
        )

    async def renew_leases(
        self, *, owner: str, held: list[tuple[int, str]], lease: timedelta
    ) -> int:
        """Extend the unexpired leases ``owner`` holds here, given as (partition, lease token)
        pairs; returns how many."""
        if self._citus:
            tokens: dict[int, set[str]] = {}
            for partition, token in held:
                tokens.setdefault(partition, set()).add(token)
            answers = await self.db.run_many(
                "lease_renew_partition",
                [
                    {"partition": p, "owner": owner, "tokens": sorted(t), "lease": lease}
                    for p, t in sorted(tokens.items())
                ],
            )
            return sum(len(rows) for rows in answers)
        params = {"owner": owner, "tokens": sorted({t for _, t in held}), "lease": lease}
        return len(await self.db.run("lease_renew", params))

    async def register_worker(
        self,
        *,
        owner: str,
        app_name: str,
        workflow_names: Sequence[str],
        ttl: timedelta,
        claims: dict[str, int] | None = None,
    ) -> None:
        """Say (on each heartbeat) that ``owner`` is alive, which workflows it runs, and how
        many it has claimed per node since it started."""
        params = {
            "owner": owner,
            "app": app_name,
            "names": sorted(workflow_names),
            "ttl": ttl,
            "claims": json.dumps(claims or {}, sort_keys=True),
        }
        await self.db.run("worker_register", params)

    async def register_catalog(self, entries: Sequence[dict[str, Any]]) -> None:
        """Record what this worker's app can run (app, name, input, timeout_seconds,
        retention_seconds per workflow): the SQL API starts workflows from it."""
        await self.db.run("catalog_register", {"entries": json.dumps(list(entries))})

    async def unregister_worker(self, *, owner: str) -> None:
        await self.db.run("worker_unregister", {"owner": owner})

    async def prune_workers(self) -> None:
        """Forget registrations of workers that stopped beating a day ago."""
        await self.db.run("workers_prune")

    async def acquire_service_lease(self, *, service: str, holder: str, ttl: timedelta) -> bool:
        """Take or keep the node-wide lease of a singleton service; True while we hold it."""
        params = {"service": service, "holder": holder, "ttl": ttl}
        async with self.db.connection() as conn:
            if await self.db.fetch(conn, "service_lease_takeover", params):
                return True
            return bool(await self.db.fetch(conn, "service_lease_insert", params))

    async def service_lease_holder(self, service: str) -> str | None:
        """Who holds a live lease of ``service`` now (None when nobody does)."""
        rows = await self.db.run("service_lease_get", {"service": service})
        return str(rows[0]["holder"]) if rows and rows[0]["live"] else None

    async def steal_service_lease(
        self, *, service: str, holder: str, previous: str, ttl: timedelta
    ) -> bool:
        """Take ``service``'s lease from ``previous`` (known dead); False if it changed hands."""
        params = {"service": service, "holder": holder, "previous": previous, "ttl": ttl}
        return bool(await self.db.run("service_lease_steal", params))

    async def release_service_lease(self, *, service: str, holder: str) -> None:
        await self.db.run("service_lease_release", {"service": service, "holder": holder})

    async def requeue_expired(
        self, *, max_expiries: int, dead_error: str, limit: int = 500
    ) -> tuple[int, list[str]]:
        """Make workflows whose lease expired runnable again, one partition per statement.

        Returns how many were requeued, and the ids dead-lettered (``max_expiries`` reached).
        """
        expired = await self.db.run(
            "expired_leases", {"limit": limit, "partitions": self.partitions}
        )
        by_partition: dict[int, list[str]] = {}
        for row in expired:
            by_partition.setdefault(row["partition"], []).append(row["workflow_id"])
        requeued, dead = 0, []
        for partition, ids in by_partition.items():
            rows = await self.db.run(
                "requeue_expired",
                {
                    "partition": partition,
                    "workflow_ids": ids,
                    "max_expiries": max_expiries,
                    "dead_error": dead_error,
                },
            )
            for row in rows:
                if row["status"] == "dead":
                    dead.append(row["workflow_id"])
                else:
                    requeued += 1
        return requeued, dead

    async def notifications(self, *, timeout: float) -> AsyncIterator[str | None]:
        """LISTEN for work on a dedicated connection; yields payloads, or None every ``timeout``.

        Ends with NodeUnavailable when the connection is lost; the caller reconnects.
        """
        async with self.db.dedicated() as conn:
            await conn.execute(self.db.queries["listen_work"])
            while True:
                with self.db.translate_errors():
                    got_any = False
                    async for notify in conn.notifies(timeout=timeout):
                        got_any = True
                        yield notify.payload
                    if conn.closed or conn.broken:
                        raise NodeUnavailable(
                            f"node {self.node}: the LISTEN connection was lost", node=self.node
                        )
                    if not got_any:
                        yield None


# Batched statements take one array per column, named <column>_list.
_CHECKPOINT_COLUMNS = (
    "partition",
    "workflow_id",
    "lease_token",
    "step_seq",
    "step_name",
    "status",
    "output",
    "error",
    "attempts",
)
_FINISH_COLUMNS = ("partition", "workflow_id", "lease_token", "status", "output", "error")


def _columns(batch: list[dict[str, Any]], names: tuple[str, ...]) -> dict[str, list[Any]]:
    return {f"{name}_list": [row[name] for row in batch] for name in names}


def _lease(row: dict[str, Any]) -> tuple[str, str]:
    return row["workflow_id"], row["lease_token"]


def _lease_key(work: ClaimedWorkflow) -> dict[str, Any]:
    return {
        "partition": work.partition,
        "workflow_id": work.workflow_id,
        "lease_token": work.lease_token,
    }
