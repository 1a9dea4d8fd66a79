"""One invariant checker, run after every fault scenario (docs/reliability.md).

1. every acknowledged workflow reached a terminal state (lost = those that did not);
2. one checkpoint per (workflow, step), positions contiguous from 0 (duplicates = violations);
3. one effect row per transactional step (``tx_steps``: the app's effects table has no unique
   constraint): none twice, none missing, none without its checkpoint;
4. external effects at least once, with the duplicate rate reported;
5. step order: checkpoints recorded in position order (except a parent's receipts of its
   children's ends: children awaited together end in any order);
6. hygiene on every node: no prepared transactions (on Citus: after its 2PC recovery), no
   advisory locks held, no session idle in a transaction, connections below max_connections;
plus the cluster's own check (one owner per partition, no orphan rows).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from shardflow import Client
from shardflow.cluster.membership import ClusterAdmin
from shardflow.cluster.verify import check_cluster
from shardflow.config import ClusterConfig
from shardflow.connectors import dsn_for, node_connector
from shardflow.storage.citus_store import CitusStore
from tests import apps
from tests.helpers import wait_until

CHILD_RESULT_PREFIX = "shardflow.child_result:"


@dataclass
class InvariantReport:
    workflows: int = 0
    lost: list[str] = field(default_factory=list)
    bad_histories: list[str] = field(default_factory=list)
    external_effects: int = 0
    external_duplicates: int = 0
    tx_effects: int = 0
    tx_duplicates: int = 0
    tx_missing: int = 0
    tx_orphans: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def external_duplicate_rate(self) -> float:
        unique = self.external_effects - self.external_duplicates
        return self.external_duplicates / unique if unique else 0.0

    def assert_ok(self) -> None:
        assert self.lost == [], f"lost workflows: {self.lost[:5]}"
        assert self.bad_histories == [], f"bad histories: {self.bad_histories[:5]}"
        assert (self.tx_duplicates, self.tx_missing, self.tx_orphans) == (0, 0, 0), (
            f"transactional effects: {self.tx_duplicates} duplicated, {self.tx_missing} "
            f"missing, {self.tx_orphans} without a checkpoint"
        )
        assert self.problems == [], self.problems


async def check_invariants(
    config: ClusterConfig,
    client: Client,
    workflow_ids: list[str],
    *,
    steps_per_workflow: int | None = None,
    effects_log: Path | None = None,
    tx_steps: frozenset[str] = frozenset(),
    deadline: float = 60.0,
) -> InvariantReport:
    report = InvariantReport(workflows=len(workflow_ids))
    outcomes = await asyncio.gather(
        *(client.result(w, timeout=deadline) for w in workflow_ids), return_exceptions=True
    )
    report.lost = [
        w for w, o in zip(workflow_ids, outcomes, strict=True) if isinstance(o, BaseException)
    ]
    histories = await asyncio.gather(*(client.steps(w) for w in workflow_ids))
    for wf_id, history in zip(workflow_ids, histories, strict=True):
        positions = [s.step_seq for s in history]
        recorded = [
            s.recorded_at for s in history if not s.step_name.startswith(CHILD_RESULT_PREFIX)
        ]
        contiguous = positions == list(range(len(history)))
        complete = steps_per_workflow is None or len(history) == steps_per_workflow
        in_order = all(
            a is not None and b is not None and a <= b for a, b in itertools.pairwise(recorded)
        )
        if not (contiguous and complete and in_order):
            report.bad_histories.append(wf_id)
    if tx_steps:
        expected = {
            (wf_id, s.step_seq)
            for wf_id, history in zip(workflow_ids, histories, strict=True)
            for s in history
            if s.step_name in tx_steps and s.status == "succeeded"
        }
        rows = await _tx_effect_rows(config, workflow_ids)
        report.tx_effects = sum(rows.values())
        report.tx_duplicates = sum(n - 1 for n in rows.values())
        report.tx_missing = len(expected - rows.keys())
        report.tx_orphans = len(rows.keys() - expected)
    if effects_log is not None and effects_log.exists():
        lines = Counter(effects_log.read_text().split())
        report.external_effects = sum(lines.values())
        report.external_duplicates = sum(n - 1 for n in lines.values())
    async with ClusterAdmin(config) as admin:
        report.problems += (await check_cluster(admin)).problems
        placement = await admin.latest_placement()
        names = [n.name for n in config.nodes] + [n.name for n in placement.nodes]

        async def none_prepared() -> bool:
            # A write cut between PREPARE and COMMIT PREPARED (a bounded write given up, a
            # killed worker) leaves a prepared transaction that Citus resolves on its next
            # recovery round; run that round now, on every node (each resolves its own). A
            # live worker's two-phase commit (a lease row of a reference table, every second)
            # may be caught between its two phases: look again until none is left, or fail.
            for name in names:
                await CitusStore(admin.connector(name)).recover_prepared()
            answers = [await admin.admin(n.name).hygiene() for n in placement.nodes]
            return not any(answer["prepared_xacts"] for answer in answers)

        if config.backend == "citus":
            with contextlib.suppress(AssertionError):  # reported below, node by node
                await wait_until(none_prepared, timeout=10, what="no prepared transactions")
        for node in placement.nodes:
            hygiene = await admin.admin(node.name).hygiene()
            for key in ("prepared_xacts", "advisory_locks", "idle_in_transaction"):
                if hygiene[key]:
                    report.problems.append(f"{node.name}: {key} = {hygiene[key]}")
            if hygiene["connections"] >= hygiene["max_connections"]:
                report.problems.append(f"{node.name}: connections at max_connections")
    return report


async def create_tx_effects_table(config: ClusterConfig) -> None:
    """The app's effects table (tests.apps.TX_EFFECTS_TABLE) on every node; on Citus, through
    the coordinator, distributed by workflow id (a transactional step's write may then go to
    another worker: still in the step's transaction, by two-phase commit)."""
    for node in config.nodes:
        connector = node_connector(config, node.name, node.dsn, role="tests")
        async with connector, connector.connection() as conn:
            await conn.execute(apps.TX_EFFECTS_TABLE)
            if config.backend == "citus":
                await conn.execute(apps.TX_EFFECTS_DISTRIBUTE)


async def _tx_effect_rows(
    config: ClusterConfig, workflow_ids: list[str]
) -> Counter[tuple[str, int]]:
    """Effect rows per (workflow, step position), from the app's table on every node."""
    rows: Counter[tuple[str, int]] = Counter()
    async with ClusterAdmin(config) as admin:
        nodes = (await admin.latest_placement()).nodes
    if config.backend == "citus":
        nodes = nodes[:1]  # one database: any node sees every row
    for node in nodes:
        connector = node_connector(config, node.name, dsn_for(config, node), role="tests")
        async with connector, connector.connection() as conn:
            cur = await conn.execute(apps.TX_EFFECT_ROWS, (workflow_ids,))
            for wf_id, seq, n in await cur.fetchall():
                rows[(wf_id, seq)] += n
    return rows
