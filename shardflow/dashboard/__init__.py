"""The web dashboard: `shardflow dashboard` (see app.py)."""

from shardflow.dashboard.app import create_app

__all__ = ["create_app"]
