"""Logging set-up for the command line (library code never configures logging)."""

from __future__ import annotations

import logging

_FIELDS = ("action", "node", "partition", "workflow_id")


class _FieldsFormatter(logging.Formatter):
    """Appends the stable structured fields (action, node, partition, workflow_id) if set."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = [f"{f}={getattr(record, f)}" for f in _FIELDS if hasattr(record, f)]
        return f"{text} [{' '.join(extras)}]" if extras else text


def configure(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler()
    handler.setFormatter(_FieldsFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # psycopg_pool reports every failed reconnect of a down node; our own warning says it once.
    logging.getLogger("psycopg.pool").setLevel(max(level, logging.ERROR))
