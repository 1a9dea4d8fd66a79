"""Cluster management: local nodes (initdb/pg_ctl) and cluster-wide administration."""

from __future__ import annotations
