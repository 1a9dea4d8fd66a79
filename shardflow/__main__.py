"""``python -m shardflow`` is the ``shardflow`` command."""

from __future__ import annotations

from shardflow.cli import main

main()
