"""Who is acting: recorded in the audit log for every administrative action."""

from __future__ import annotations

import getpass
import os
import socket


def default_actor() -> str:
    """``user@host`` (override with SHARDFLOW_ACTOR, e.g. for a service account)."""
    if actor := os.environ.get("SHARDFLOW_ACTOR"):
        return actor
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"
