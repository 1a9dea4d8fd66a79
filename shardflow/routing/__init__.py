"""Routing and placement: pure functions, no I/O.

``partition_for`` maps a workflow id (or routing key) to a partition; ``Placement`` maps a
partition to the node that owns it; ``target_placement`` computes where partitions should live.
"""

from __future__ import annotations

from shardflow.routing.hashing import partition_for
from shardflow.routing.placement import Placement, PlacementNode, target_placement

__all__ = ["Placement", "PlacementNode", "partition_for", "target_placement"]
