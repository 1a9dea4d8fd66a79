"""Cluster invariants, checked from the nodes' own rows (``shardflow cluster check``).

Every partition is owned by exactly one node, the one the newest placement names; no
partition is left ``moving``; no journaled move is unfinished; no node holds rows of a
partition it does not own; no prepared transaction is left behind. A node that cannot be
reached is itself a problem; the reachable ones are still checked.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from shardflow.cluster.membership import ClusterAdmin
from shardflow.errors import NodeUnavailable


@dataclass
class CheckReport:
    problems: list[str] = field(default_factory=list)
    placement_version: int = 0
    workflows: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


async def check_cluster(admin: ClusterAdmin) -> CheckReport:
    """Read every node of the newest placement and list what violates an invariant.

    On Citus, what Citus owns is checked instead: every partition placed on an active node,
    nodes reaching each other, no rebalance left half done.
    """
    if admin.config.backend == "citus":
        from shardflow.cluster.citus import check_citus

        found = await check_citus(admin)
        return CheckReport(
            problems=found.problems,
            placement_version=found.placement_version,
            workflows=found.workflows,
        )
    placement = await admin.latest_placement()
    report = CheckReport(placement_version=placement.version)
    names = [n.name for n in placement.nodes]
    owners: dict[int, list[str]] = {}
    unreachable: set[str] = set()

    async def inspect(name: str) -> None:
        mover, store = admin.mover(name), admin.admin(name)
        try:
            ownership = await store.ownership()
            with_rows = await mover.partitions_with_rows()
            active = await mover.active_moves()
            hygiene = await store.hygiene()
            rows = await mover.node_rows()
        except NodeUnavailable as exc:
            unreachable.add(name)
            report.problems.append(
                f"{name} is unreachable, its {len(placement.partitions_of(name))} partitions "
                f"could not be checked: {str(exc).split(';')[0]}"
            )
            return
        report.workflows += rows["workflows"]  # after the await: no lost update
        owned = set()
        for o in ownership:
            owners.setdefault(o.partition, []).append(name)
            owned.add(o.partition)
            if o.state != "owned":
                report.problems.append(f"partition {o.partition} is {o.state} on {name}")
        if orphans := with_rows - owned:
            report.problems.append(
                f"{name} holds rows of partitions it does not own: {sorted(orphans)}"
            )
        if active:
            report.problems.append(f"{name} has {len(active)} unfinished moves")
        if hygiene["prepared_xacts"]:
            report.problems.append(f"{name} has {hygiene['prepared_xacts']} prepared transactions")

    await asyncio.gather(*(inspect(n) for n in names))
    for p in range(placement.partition_count):
        if placement.owner(p) in unreachable:
            continue  # already reported: its owner could not be asked
        holders = owners.get(p, [])
        if len(holders) != 1:
            report.problems.append(f"partition {p} is owned by {holders or 'nobody'}")
        elif holders[0] != placement.owner(p):
            report.problems.append(
                f"partition {p} is owned by {holders[0]} but placement "
                f"v{placement.version} says {placement.owner(p)}"
            )
    return report
