"""The client: start, inspect, wait for, signal and cancel workflows, routed to the owning
node.

Routing uses the cached placement; a node that no longer owns a partition answers with
PartitionMoved, and the client refreshes the placement (highest version any node reports)
and retries on the new owner.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Hashable, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, TypeVar

import psycopg

from shardflow import tracing
from shardflow.audit import default_actor
from shardflow.config import ClusterConfig
from shardflow.engine.app import App, WorkflowDef
from shardflow.engine.codec import check_identifier, check_name, encode_payload
from shardflow.engine.context import CHILD_SIGNAL
from shardflow.errors import (
    EventTimeout,
    InvalidInput,
    NodeUnavailable,
    PartitionMoved,
    ResultTimeout,
    SignalRefused,
    UnknownWorkflow,
    WorkflowCancelled,
    WorkflowConflict,
    WorkflowFailed,
    WorkflowNotFound,
)

# Re-exported: callers import them from here.
from shardflow.handle import WorkflowHandle
from shardflow.listing import WorkflowPage, list_workflows
from shardflow.manage import fork_workflow
from shardflow.queues.start import queue_fields
from shardflow.routing import Placement
from shardflow.schedules.client import Schedules
from shardflow.storage import ClientStore, NodeConnector
from shardflow.storage.batcher import WriteBatcher
from shardflow.storage.client_store import EventRecord
from shardflow.storage.connector import PoolExhausted
from shardflow.storage.manage_store import ManageStore, RetryPoint
from shardflow.storage.records import StepRecord, WorkflowRecord
from shardflow.topology import Topology
from shardflow.transactional import OwningNode, check_open_transaction, start_in_transaction
from shardflow.wakeup import WakeUp

log = logging.getLogger("shardflow.client")

T = TypeVar("T")
# How long a call keeps re-routing while a partition it needs is being moved.
_MOVE_WAIT_SECONDS = 10.0


class Client:
    """Async client. ``async with Client(config, app=app) as client: ...``

    ``app`` lets the client check workflow names before anything is written; without it,
    start workflows by passing the decorated workflow itself.
    """

    def __init__(self, config: ClusterConfig, *, app: App | None = None, actor: str | None = None):
        config.require_nodes()
        self.config = config
        self.app = app
        # Recorded in the audit log for cancel and requeue.
        self.actor = actor or default_actor()
        self.topology = Topology(config, role="client")
        # Citus: calls that went through the coordinator because a worker was unreachable.
        self.coordinator_fallbacks = 0
        self._wake_ups: dict[str, WakeUp] = {}
        self._start_batchers: dict[str, WriteBatcher[dict[str, Any]]] = {}
        # Create, pause, resume, delete, list and backfill schedules.
        self.schedules = Schedules(self)

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open pools to the nodes and load the placement."""
        await self.topology.refresh()

    async def close(self) -> None:
        await asyncio.gather(*(w.flush() for w in self._wake_ups.values()))
        await self.topology.close()

    @property
    def placement(self) -> Placement:
        return self.topology.placement

    async def refresh_placement(self, *, min_version: int = 0) -> Placement:
        """Read the placement in force again (unless the cached one is newer than
        ``min_version``)."""
        return await self.topology.refresh(min_version=min_version)

    def route(self, key: str) -> tuple[int, str]:
        """(partition, owning node name) for a workflow id or routing key."""
        return self.topology.route(key)

    async def _routed(
        self, key: str, op: Callable[[ClientStore, int], Awaitable[T]], *, read: bool = False
    ) -> T:
        """Run ``op`` on the node owning ``key``, following moves.

        A partition being moved rejects writes for a moment (its freeze); the client keeps
        refreshing the placement and retrying for up to ``_MOVE_WAIT_SECONDS``. A ``read``
        commits nothing, so on Citus it may go through the coordinator even when the
        statement had reached the unreachable worker.
        """
        deadline = time.monotonic() + _MOVE_WAIT_SECONDS
        delay = 0.01
        while True:
            partition, node = self.route(key)
            try:
                return await op(ClientStore(self._connector_for(node)), partition)
            except NodeUnavailable as lost:
                entry = self.config.nodes[0].name
                if (
                    self.config.backend != "citus"
                    or (lost.maybe_committed and not read)
                    or node == entry
                    or isinstance(lost, PoolExhausted)  # busy here, not unreachable
                ):
                    raise
                # Citus: the worker cannot be reached directly (from here), but the
                # coordinator routes any statement to the shard. Slower; counted.
                self.coordinator_fallbacks += 1
                log.warning(
                    "node %s unreachable directly, going through the coordinator: %s",
                    node,
                    lost,
                    extra={"action": "coordinator_fallback", "node": node},
                )
                try:
                    return await op(ClientStore(self._connector_for(entry)), partition)
                except NodeUnavailable as again:  # the worker is down, not just unreachable
                    raise NodeUnavailable(
                        str(lost), node=node, maybe_committed=again.maybe_committed
                    ) from again
            except PartitionMoved as moved:
                if time.monotonic() + delay > deadline:
                    raise
                before = self.placement.version
                await self.refresh_placement(min_version=moved.placement_version)
                if self.placement.version == before:
                    await asyncio.sleep(delay)  # the move is still in its freeze
                    delay = min(delay * 2, 0.2)

    def _start_batcher(self, node: str) -> WriteBatcher[dict[str, Any]]:
        batcher = self._start_batchers.get(node)
        if batcher is None:
            batcher = WriteBatcher(
                lambda rows: ClientStore(self._connector_for(node)).insert_many(rows),
                keys=lambda row: (row["workflow_id"],),
            )
            self._start_batchers[node] = batcher
        return batcher

    def _wake(self, store: ClientStore, partitions: set[int]) -> None:
        """Wake the workers of the node that just got work (coalesced, not awaited)."""
        node = store.db.name
        wake_up = self._wake_ups.get(node)
        if wake_up is None:
            # The connector is looked up at send time: membership changes may replace it.
            wake_up = WakeUp(
                node, lambda payload: ClientStore(self._connector_for(node)).notify_work(payload)
            )
            self._wake_ups[node] = wake_up
        wake_up.request(partitions)

    def _connector_for(self, node: str) -> NodeConnector:
        return self.topology.connector(node)

    # -- starting -----------------------------------------------------------------------

    async def start(
        self,
        workflow: WorkflowDef | str,
        input: Any = None,
        *,
        workflow_id: str | None = None,
        routing_key: str | None = None,
        connection: psycopg.AsyncConnection[Any] | None = None,
        priority: int = 0,
        concurrency_key: str | None = None,
    ) -> WorkflowHandle:
        """Start a workflow, or return the existing one with the same id (idempotent).

        ``connection``: start it inside the caller's open transaction on that connection,
        which must be to the node that owns the workflow (``node_for(key)``, the key being
        the routing key, else the concurrency key, else the id): the workflow exists once
        the caller commits, and never if it rolls back.

        A workflow of a queue waits there until a worker admits it: ``priority`` (smaller
        first) orders it among the waiting ones, ``concurrency_key`` counts it against the
        queue's ``per_key`` limit. A key also routes the workflow when ``routing_key`` is not
        given, so all workflows of one key share a node and the per-key limit is exact
        cluster-wide (look them up with ``routing_key=`` the key, as the handle does).

        Raises InvalidInput subclasses before writing anything, WorkflowConflict when the id
        exists under another workflow name, NodeUnavailable when the owner is down, WrongNode
        when ``connection`` is to another node.
        """
        if connection is not None:
            connection = check_open_transaction(connection)
        definition = self._definition(workflow)
        name = definition.name
        definition.check_input(input is not None)
        limits = self.config.limits
        wf_id = workflow_id if workflow_id is not None else str(uuid.uuid4())
        check_identifier(wf_id, what="workflow_id", max_length=limits.max_id_length)
        if routing_key is not None:
            check_identifier(routing_key, what="routing_key", max_length=limits.max_id_length)
        flow = queue_fields(
            definition,
            priority=priority,
            concurrency_key=concurrency_key,
            max_id_length=limits.max_id_length,
        )
        if routing_key is None and concurrency_key is not None:
            routing_key = concurrency_key
        payload = encode_payload(input, max_bytes=limits.max_payload_bytes, what="workflow input")
        timeout = timedelta(seconds=definition.timeout) if definition.timeout else None
        with tracing.span(
            f"shardflow.start {name}",
            attributes={tracing.WORKFLOW_ID: wf_id, tracing.WORKFLOW: name},
            kind="producer",
        ):
            if connection is not None:
                return await self._start_in(
                    connection, definition, wf_id, routing_key, payload.text, timeout, flow
                )
            return await self._start(definition, wf_id, routing_key, payload.text, timeout, flow)

    def node_for(self, routing_key: str) -> OwningNode:
        """The node that owns ``routing_key`` (a workflow id or routing key) now, with
        connections to it: rows an application keeps there commit atomically with the
        workflows it starts with ``start(..., connection=conn)``."""
        check_identifier(
            routing_key, what="routing_key", max_length=self.config.limits.max_id_length
        )
        partition, node = self.route(routing_key)
        return OwningNode(node, partition, self._connector_for(node))

    async def _start_in(
        self,
        conn: psycopg.AsyncConnection[Any],
        definition: WorkflowDef,
        wf_id: str,
        routing_key: str | None,
        text: str | None,
        timeout: timedelta | None,
        flow: dict[str, Any],
    ) -> WorkflowHandle:
        """The start as one statement of the caller's transaction on ``conn``."""
        outcome = await start_in_transaction(
            self, conn, definition, wf_id, routing_key, text, timeout, flow
        )
        if outcome.record is not None:
            _check_same_workflow(wf_id, outcome.record, definition)
        return WorkflowHandle(self, wf_id, routing_key, created=outcome.created)

    def start_row(
        self,
        definition: WorkflowDef,
        partition: int,
        wf_id: str,
        routing_key: str | None,
        text: str | None,
        timeout: timedelta | None,
        flow: dict[str, Any],
    ) -> dict[str, Any]:
        """What a start of ``definition`` writes (``text``: its checked JSON input; ``flow``:
        its queue fields), in every way a start is written."""
        return {
            "partition": partition,
            "workflow_id": wf_id,
            "name": definition.name,
            "app": definition.app,
            "routing_key": routing_key,
            "input": text,
            "timeout": timeout,
            # The worker's run continues this trace (None: nothing traced, nothing stored).
            "trace_context": tracing.current_context(),
            # How long it is kept once ended: fixed now, whoever ends it (a worker, a cancel).
            "retention": definition.retention_seconds(self.config.retention_seconds),
            "app_version": definition.app_version,
            **flow,
        }

    async def _start(
        self,
        definition: WorkflowDef,
        wf_id: str,
        routing_key: str | None,
        text: str | None,
        timeout: timedelta | None,
        flow: dict[str, Any],
    ) -> WorkflowHandle:
        async def insert(store: ClientStore, partition: int) -> WorkflowHandle:
            row = self.start_row(definition, partition, wf_id, routing_key, text, timeout, flow)
            # Concurrent starts to one node share a statement and a commit.
            if await self._start_batcher(store.db.name).submit(row):
                self._wake(store, {partition})
                return WorkflowHandle(self, wf_id, routing_key, created=True)
            # Not created: the id exists, or the partition is not this node's (moved).
            outcome = await store.insert_workflow(**row)
            if outcome.created:
                self._wake(store, {partition})
                return WorkflowHandle(self, wf_id, routing_key, created=True)
            existing = outcome.record
            assert existing is not None
            _check_same_workflow(wf_id, existing, definition)
            return WorkflowHandle(self, wf_id, routing_key, created=False)

        try:
            return await self._routed(routing_key or wf_id, insert)
        except NodeUnavailable as lost:
            if not lost.maybe_committed:
                raise  # nothing reached the node: the start certainly did not happen
            # The connection dropped after the statement was sent: the server may have
            # committed. Look it up rather than guess (starts are idempotent by id anyway).
            return await self._resolve_ambiguous_start(wf_id, routing_key, definition, lost)

    async def start_many(
        self,
        workflow: WorkflowDef | str,
        inputs: Sequence[Any],
        *,
        workflow_ids: Sequence[str] | None = None,
    ) -> list[WorkflowHandle]:
        """Start many workflows of one kind: one statement per node, not one per workflow.

        Every id and input is validated before anything is written (a bad one raises and
        nothing starts). Ids that already exist, or whose partition is moving, go through
        ``start()`` one by one, so the result is the same as calling ``start()`` for each:
        a handle per input, in order, ``created`` False for an existing id.
        """
        definition = self._definition(workflow)
        for value in inputs:
            definition.check_input(value is not None)
        limits = self.config.limits
        if workflow_ids is None:
            ids = [str(uuid.uuid4()) for _ in inputs]
        else:
            ids = list(workflow_ids)
            if len(ids) != len(inputs):
                raise InvalidInput(
                    f"start_many got {len(inputs)} inputs but {len(ids)} workflow_ids; "
                    "pass one id per input, or none"
                )
            for wf_id in ids:
                check_identifier(wf_id, what="workflow_id", max_length=limits.max_id_length)
            if len(set(ids)) != len(ids):
                raise InvalidInput("start_many got the same workflow_id twice; ids must be unique")
        texts = [
            encode_payload(value, max_bytes=limits.max_payload_bytes, what="workflow input").text
            for value in inputs
        ]
        timeout = timedelta(seconds=definition.timeout) if definition.timeout else None
        by_node: dict[str, list[tuple[int, str, str | None]]] = {}
        for wf_id, text in zip(ids, texts, strict=True):
            partition, node = self.route(wf_id)
            by_node.setdefault(node, []).append((partition, wf_id, text))

        flow = queue_fields(
            definition, priority=0, concurrency_key=None, max_id_length=limits.max_id_length
        )

        async def insert(node: str, rows: list[tuple[int, str, str | None]]) -> set[Hashable]:
            store = ClientStore(self._connector_for(node))
            try:
                created = await store.insert_many(
                    [
                        self.start_row(definition, partition, wf_id, None, text, timeout, flow)
                        for partition, wf_id, text in rows
                    ]
                )
            except NodeUnavailable as exc:
                if exc.maybe_committed:
                    return set()  # each id is then resolved by start(), which looks it up
                raise
            if created:
                self._wake(store, {partition for partition, wf_id, _ in rows if wf_id in created})
            return created

        created = set().union(
            *await asyncio.gather(*(insert(n, rows) for n, rows in by_node.items()))
        )
        handles: list[WorkflowHandle] = []
        for wf_id, value in zip(ids, inputs, strict=True):
            if wf_id in created:
                handles.append(WorkflowHandle(self, wf_id, None, created=True))
            else:  # existed already, or its partition moved meanwhile
                handles.append(await self.start(workflow, value, workflow_id=wf_id))
        return handles

    async def _resolve_ambiguous_start(
        self,
        wf_id: str,
        routing_key: str | None,
        definition: WorkflowDef,
        lost: NodeUnavailable,
    ) -> WorkflowHandle:
        try:
            record = await self.get(wf_id, routing_key=routing_key)
        except (NodeUnavailable, WorkflowNotFound):
            raise NodeUnavailable(
                f"{lost}. The start of {wf_id!r} may or may not have committed: call start() "
                "again with the same workflow_id (it is idempotent) once the node is back",
                node=lost.node,
            ) from lost
        _check_same_workflow(wf_id, record, definition)
        log.info(
            "ambiguous start of %s resolved by lookup: it committed",
            wf_id,
            extra={"action": "ambiguous_start_resolved", "workflow_id": wf_id},
        )
        return WorkflowHandle(self, wf_id, routing_key, created=None)

    def _definition(self, workflow: WorkflowDef | str) -> WorkflowDef:
        """The registered workflow to start: the decorated one, or the app's by name."""
        if isinstance(workflow, WorkflowDef):
            return workflow
        if not isinstance(workflow, str) or not workflow:
            raise UnknownWorkflow(
                f"workflow must be a registered workflow or its name, got {workflow!r}"
            )
        return self.app_workflow(workflow)

    def app_workflow(self, name: str) -> WorkflowDef:
        """The definition of ``name`` from the client's app (UnknownWorkflow if missing)."""
        if self.app is None:
            raise UnknownWorkflow(
                f"cannot check workflow name {name!r}: create the client with app=... or pass "
                "the decorated workflow instead of its name"
            )
        return self.app.get_workflow(name)

    # -- reading ------------------------------------------------------------------------

    async def get(self, workflow_id: str, *, routing_key: str | None = None) -> WorkflowRecord:
        """The workflow's current record; WorkflowNotFound if there is none."""
        key = self._key(workflow_id, routing_key)

        async def fetch(store: ClientStore, partition: int) -> WorkflowRecord:
            record = await store.get_workflow(partition, workflow_id)
            if record is None:
                await store.check_owned(partition)  # a moved partition is not "not found"
                raise WorkflowNotFound(
                    f"no workflow {workflow_id!r}"
                    + (f" with routing key {routing_key!r}" if routing_key else "")
                    + "; check the id (and routing key); a finished workflow is removed once "
                    "its retention has passed"
                )
            return record

        return await self._routed(key, fetch, read=True)

    async def status(self, workflow_id: str, *, routing_key: str | None = None) -> str:
        return (await self.get(workflow_id, routing_key=routing_key)).status

    async def steps(self, workflow_id: str, *, routing_key: str | None = None) -> list[StepRecord]:
        """The workflow's checkpoints in order (its durable history)."""
        await self.get(workflow_id, routing_key=routing_key)
        return await self._routed(
            self._key(workflow_id, routing_key),
            lambda store, partition: store.steps(partition, workflow_id),
            read=True,
        )

    async def result(
        self, workflow_id: str, *, routing_key: str | None = None, timeout: float | None = None
    ) -> Any:
        """Wait for the workflow to end and return its output.

        Raises WorkflowFailed, WorkflowCancelled, or ResultTimeout (the workflow goes on).
        An outage of the workflow's node is waited out (NodeUnavailable only at the deadline).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.005
        while True:
            try:
                record = await self.get(workflow_id, routing_key=routing_key)
            except NodeUnavailable:
                if deadline is not None and time.monotonic() + delay > deadline:
                    raise
                await asyncio.sleep(min(delay * 10, 0.5))
                continue
            if record.status == "succeeded":
                return record.output
            if record.status == "failed":
                raise WorkflowFailed(workflow_id, record.error)
            if record.status == "cancelled":
                raise WorkflowCancelled(f"workflow {workflow_id!r} was cancelled")
            if record.status == "dead":
                raise WorkflowFailed(workflow_id, record.error)
            if deadline is not None and time.monotonic() + delay > deadline:
                raise ResultTimeout(
                    f"workflow {workflow_id!r} is still {record.status} after {timeout}s; "
                    "call result() again to keep waiting"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    async def cancel(self, workflow_id: str, *, routing_key: str | None = None) -> bool:
        """Cancel a pending or running workflow. False if it had already ended.

        A running step is not interrupted; its worker's next write is refused. A workflow
        that registered compensations runs them first (it stays pending until then), and
        cancellation cascades to the children it started, on every node.
        """
        await self.get(workflow_id, routing_key=routing_key)

        async def cancel(store: ClientStore, partition: int) -> bool:
            done = await store.cancel_workflow(partition, workflow_id, actor=self.actor)
            if done:
                self._wake(store, {partition})  # a saga's worker undoes it now
            return done

        return await self._routed(self._key(workflow_id, routing_key), cancel)

    # -- signals and events ---------------------------------------------------------

    async def signal(
        self,
        workflow_id: str,
        name: str,
        payload: Any = None,
        *,
        signal_id: str | None = None,
        routing_key: str | None = None,
        audited: bool = False,
    ) -> bool:
        """Send signal ``name`` with ``payload`` (JSON) to a pending or running workflow.

        Stored on the workflow's node, so a signal sent before the workflow waits for it is
        kept; a workflow waiting for ``name`` is woken at once. With ``signal_id``, a resend
        of the same id stores nothing and returns False (also once the workflow has ended).
        SignalRefused if the workflow has ended, WorkflowNotFound if there is none.
        ``audited``: an operator's signal (CLI, dashboard), written to the audit log under
        this client's actor with the signal.
        """
        check_name(name, what="signal name")
        max_length = self.config.limits.max_id_length
        if signal_id is None:
            signal_id = str(uuid.uuid4())
        check_identifier(signal_id, what="signal_id", max_length=max_length, error=InvalidInput)
        encoded = encode_payload(
            payload,
            max_bytes=self.config.limits.max_payload_bytes,
            what=f"payload of signal {name!r}",
        )

        return await self._send_signal(
            workflow_id,
            name,
            encoded.text,
            signal_id=signal_id,
            routing_key=routing_key,
            actor=self.actor if audited else None,
        )

    async def _send_signal(
        self,
        workflow_id: str,
        name: str,
        payload: str | None,
        *,
        signal_id: str,
        routing_key: str | None,
        actor: str | None = None,
    ) -> bool:
        """Store a signal whose name and JSON payload text were checked (or are shardflow's
        own: a child's end told to its parent); audited under ``actor`` if given."""

        async def send(store: ClientStore, partition: int) -> bool:
            sent = await store.send_signal(
                partition,
                workflow_id,
                name=name,
                signal_id=signal_id,
                payload=payload,
                actor=actor,
            )
            if sent is None:
                record = await store.get_workflow(partition, workflow_id)
                if record is None:
                    raise WorkflowNotFound(
                        f"no workflow {workflow_id!r}"
                        + (f" with routing key {routing_key!r}" if routing_key else "")
                        + "; check the id (and routing key): nothing was sent"
                    )
                raise SignalRefused(
                    f"workflow {workflow_id!r} is {record.status}: signals go only to pending "
                    "or running workflows, so nothing was stored; start a new workflow instead"
                )
            if sent.woken:
                self._wake(store, {partition})
            return sent.stored

        return await self._routed(routing_key or workflow_id, send)

    # -- the relay's deliveries (shardflow/worker/relay.py) -------------------------------

    async def deliver_child_start(self, start: dict[str, Any]) -> bool:
        """Start a child written to an outbox (idempotent by id: a repeated delivery finds
        it started). True when this call created it."""
        timeout = start["timeout"]

        async def insert(store: ClientStore, partition: int) -> bool:
            outcome = await store.insert_workflow(
                partition=partition,
                workflow_id=start["workflow_id"],
                name=start["name"],
                app=start["app"],
                routing_key=start["routing_key"],
                input=json.dumps(start["input"], ensure_ascii=False),
                timeout=None if timeout is None else timedelta(seconds=timeout),
                parent_id=start["parent_id"],
                parent_key=start["parent_key"],
                trace_context=start.get("trace_context"),
                retention=start.get("retention"),
                app_version=start.get("app_version"),
                queue=start.get("queue"),
            )
            if outcome.created:
                self._wake(store, {partition})
            return outcome.created

        return await self._routed(start["routing_key"], insert)

    async def tell_parent(self, *, parent_id: str, parent_key: str, child: dict[str, Any]) -> bool:
        """Deliver a child's end to its parent as signal ``shardflow.child`` (id
        ``shardflow.child:<child id>``: a repeated delivery stores nothing). False if the
        parent has ended or is gone (nobody waits for it any more)."""
        try:
            await self._send_signal(
                parent_id,
                CHILD_SIGNAL,
                json.dumps(child, ensure_ascii=False),
                signal_id=f"{CHILD_SIGNAL}:{child['workflow_id']}",
                routing_key=parent_key,
            )
        except (SignalRefused, WorkflowNotFound):
            return False
        return True

    async def get_event(
        self,
        workflow_id: str,
        key: str,
        *,
        timeout: float = 0,
        routing_key: str | None = None,
    ) -> Any:
        """The value the workflow published under ``key`` (``ctx.set_event``), waiting up to
        ``timeout`` seconds for it to appear; EventTimeout if it did not."""
        check_name(key, what="event key")
        if not timeout >= 0:
            raise InvalidInput(f"timeout must be >= 0 seconds, got {timeout!r}")
        await self.get(workflow_id, routing_key=routing_key)  # WorkflowNotFound first
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            found = await self._events(workflow_id, routing_key, key)
            if found:
                return found[0].value
            if time.monotonic() + delay > deadline:
                raise EventTimeout(
                    f"workflow {workflow_id!r} has not set event {key!r} within {timeout}s; it "
                    f"may still: ask again, or list what it set with `shardflow events "
                    f"{workflow_id}`"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.1)

    async def events(self, workflow_id: str, *, routing_key: str | None = None) -> dict[str, Any]:
        """Every event the workflow published, by key (in the order they were last set)."""
        await self.get(workflow_id, routing_key=routing_key)
        return {e.key: e.value for e in await self._events(workflow_id, routing_key, None)}

    async def _events(
        self, workflow_id: str, routing_key: str | None, key: str | None
    ) -> list[EventRecord]:
        return await self._routed(
            self._key(workflow_id, routing_key),
            lambda store, partition: store.events(partition, workflow_id, key),
            read=True,
        )

    async def requeue(self, workflow_id: str, *, routing_key: str | None = None) -> bool:
        """Give a dead-lettered workflow another run (after fixing what killed its workers).

        False if the workflow is not dead-lettered.
        """
        return await self._status_change("requeue", workflow_id, routing_key)

    async def resume(self, workflow_id: str, *, routing_key: str | None = None) -> bool:
        """Run a stuck workflow again (parked when its code stopped matching its history),
        once code that matches is deployed: it replays from the start. Audited. False if it
        is not stuck."""
        return await self._status_change("resume", workflow_id, routing_key)

    async def _status_change(self, action: str, workflow_id: str, key: str | None) -> bool:
        """An audited requeue or resume on the workflow's node (WorkflowNotFound first)."""
        await self.get(workflow_id, routing_key=key)
        return await self._routed(
            self._key(workflow_id, key),
            lambda store, partition: store.audited_change(
                action, partition, workflow_id, actor=self.actor
            ),
        )

    async def retry(self, workflow_id: str, *, routing_key: str | None = None) -> RetryPoint:
        """Run a failed workflow again from its failed step: the checkpoints from its last
        failed one on are dropped (from after its last one, when its own code raised), and a
        worker replays the rest and runs on. Audited. NotRetryable (nothing changed) when it
        is not failed, is a child, ran compensations, or started children after that step."""
        key = self._key(workflow_id, routing_key)
        return await self._routed(
            key,
            lambda store, partition: ManageStore(store).retry(
                partition, workflow_id, actor=self.actor
            ),
        )

    async def fork(
        self,
        workflow_id: str,
        *,
        from_step: int,
        routing_key: str | None = None,
        new_workflow_id: str | None = None,
    ) -> WorkflowHandle:
        """A new workflow of the same name, app and input that replays the first
        ``from_step`` checkpoints of ``workflow_id`` (their results, not their effects) and
        runs on from there; the source is not touched. It keeps the source's routing key (so
        its node) when it had one. ``new_workflow_id`` defaults to ``ID-fork-XXXXXXXX``.
        Audited. An existing ``new_workflow_id`` raises WorkflowConflict."""
        fork_id, key = await fork_workflow(
            self, workflow_id, from_step, routing_key=routing_key, new_workflow_id=new_workflow_id
        )
        return WorkflowHandle(self, fork_id, key, created=True)

    async def list(
        self,
        *,
        status: str | None = None,
        name: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        node: str | None = None,
        created_since: datetime | None = None,
        created_until: datetime | None = None,
        version: str | None = None,
    ) -> WorkflowPage:
        """Workflows across all nodes (or one ``node``), newest first, optionally filtered;
        paginated. ``created_since`` (inclusive) and ``created_until`` (exclusive) bound the
        start time; both must be timezone-aware. ``version``: started by that App version."""
        return await list_workflows(
            self,
            status=status,
            name=name,
            limit=limit,
            cursor=cursor,
            node=node,
            created_since=created_since,
            created_until=created_until,
            version=version,
        )

    def _key(self, workflow_id: str, routing_key: str | None) -> str:
        """The routing key of a lookup, after the same checks a start applies."""
        max_length = self.config.limits.max_id_length
        check_identifier(workflow_id, what="workflow_id", max_length=max_length)
        if routing_key is not None:
            check_identifier(routing_key, what="routing_key", max_length=max_length)
        return routing_key or workflow_id


def _check_same_workflow(wf_id: str, existing: WorkflowRecord, definition: WorkflowDef) -> None:
    """An existing id must be the same workflow of the same app, or the start is a conflict."""
    if existing.name != definition.name or existing.app != definition.app:
        raise WorkflowConflict(
            f"workflow id {wf_id!r} already exists as workflow {existing.name!r} of app "
            f"{existing.app!r}, not {definition.name!r} of app {definition.app!r}; choose "
            "another id"
        )
