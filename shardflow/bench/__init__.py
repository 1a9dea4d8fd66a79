"""Benchmarks behind ``shardflow bench`` (run on a fresh local cluster of their own)."""

from __future__ import annotations
