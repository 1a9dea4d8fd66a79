"""Partition -> node.

The placement *in force* is stored data with a version; this module only computes what a
placement should be. ``target_placement`` is balanced to within one partition of each node's
weighted share and, given the current placement, moves the fewest partitions: a partition
stays where it is unless its node is gone or holds more than its share. Which partitions move,
and where to, follows a uhashring consistent-hash ring, so the choice is stable and spread.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from uhashring import HashRing


@dataclass(frozen=True, kw_only=True)
class PlacementNode:
    """A node as published in the placement: name, password-free conninfo, weight."""

    name: str
    conninfo: Mapping[str, str]
    weight: int = 1


@dataclass(frozen=True, kw_only=True)
class Placement:
    """A versioned map from every partition to the name of the node that owns it."""

    version: int
    nodes: tuple[PlacementNode, ...]
    owners: tuple[str, ...]

    @property
    def partition_count(self) -> int:
        return len(self.owners)

    def owner(self, partition: int) -> str:
        """Name of the node owning ``partition``."""
        return self.owners[partition]

    def node(self, name: str) -> PlacementNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def partitions_of(self, name: str) -> list[int]:
        return [p for p, owner in enumerate(self.owners) if owner == name]

    def counts(self) -> dict[str, int]:
        """Partitions per node, including nodes that own none."""
        counts = {n.name: 0 for n in self.nodes}
        for owner in self.owners:
            counts[owner] = counts.get(owner, 0) + 1
        return counts

    def with_owner(self, partition: int, node: str) -> Placement:
        """The next version, with ``partition`` owned by ``node``."""
        owners = list(self.owners)
        owners[partition] = node
        return Placement(version=self.version + 1, nodes=self.nodes, owners=tuple(owners))

    def with_nodes(self, nodes: tuple[PlacementNode, ...]) -> Placement:
        """The next version, with another node list (membership or weights changed)."""
        names = {n.name for n in nodes}
        if missing := {o for o in self.owners if o not in names}:
            raise ValueError(f"nodes {sorted(missing)} still own partitions")
        return Placement(version=self.version + 1, nodes=nodes, owners=self.owners)

    def weights(self) -> dict[str, int]:
        return {n.name: n.weight for n in self.nodes}

    def to_record(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "partition_count": self.partition_count,
            "nodes": [
                {"name": n.name, "conninfo": dict(n.conninfo), "weight": n.weight}
                for n in self.nodes
            ],
            "owners": list(self.owners),
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Placement:
        nodes = tuple(
            PlacementNode(name=n["name"], conninfo=dict(n["conninfo"]), weight=int(n["weight"]))
            for n in record["nodes"]
        )
        return cls(version=int(record["version"]), nodes=nodes, owners=tuple(record["owners"]))


def weighted_quotas(weights: Mapping[str, int], partition_count: int) -> dict[str, int]:
    """Each node's share of ``partition_count`` by weight, by largest remainder (sums exactly)."""
    total = sum(weights.values())
    exact = {name: partition_count * w / total for name, w in weights.items()}
    quotas = {name: int(share) for name, share in exact.items()}
    leftover = partition_count - sum(quotas.values())
    by_remainder = sorted(weights, key=lambda n: (-(exact[n] - quotas[n]), n))
    for name in by_remainder[:leftover]:
        quotas[name] += 1
    return quotas


def _ring(weights: Mapping[str, int]) -> HashRing:
    return HashRing(nodes={name: {"weight": w} for name, w in weights.items()})


def target_placement(
    weights: Mapping[str, int],
    partition_count: int,
    current: Sequence[str] | None = None,
) -> list[str]:
    """The owner of every partition for nodes ``weights`` (name -> weight).

    With ``current`` (today's owners), only partitions on removed or over-full nodes move.
    """
    active = {name: w for name, w in weights.items() if w > 0}
    if not active:
        raise ValueError("a placement needs at least one node with a positive weight")
    if current is not None and len(current) != partition_count:
        raise ValueError("current placement has a different partition count")
    # Weight 0 marks a node being drained: it keeps no partition.
    ring = _ring(active)
    quotas = dict.fromkeys(weights, 0) | weighted_quotas(active, partition_count)
    preference = [
        [conf["nodename"] for conf in ring.range(f"partition-{p}", unique=True)]
        for p in range(partition_count)
    ]
    owners: list[str | None] = [None] * partition_count
    load = dict.fromkeys(weights, 0)

    if current is not None:
        # Keep partitions in place; among a node's partitions, keep first those the ring
        # would also give it, so the ones that leave are the ones that "belong" elsewhere.
        def keep_order(p: int) -> tuple[int, int]:
            return (0 if preference[p][0] == current[p] else 1, p)

        for p in sorted(range(partition_count), key=keep_order):
            node = current[p]
            if node in load and load[node] < quotas[node]:
                owners[p] = node
                load[node] += 1

    for p in range(partition_count):
        if owners[p] is None:
            node = next(n for n in preference[p] if load[n] < quotas[n])
            owners[p] = node
            load[node] += 1
    return [o for o in owners if o is not None]
