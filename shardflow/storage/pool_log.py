"""One log line per node outage from the connection pools, not one per reconnect attempt.

psycopg_pool logs a warning on every failed background connection attempt; during an outage
that is a line every few hundred milliseconds per pool, on the stderr of every client. The
filter lets the first one through per pool and drops the rest until the connector sees the
node again (``recovered``), which logs one "reachable again" line itself.
"""

from __future__ import annotations

import logging

_REPEATING = ("error connecting in %r", "reconnection attempt in pool %r")


class OutageFilter(logging.Filter):
    """Drops repeated connection-failure warnings of a pool until it recovers."""

    def __init__(self) -> None:
        super().__init__()
        self._failing: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.msg, str) or not record.msg.startswith(_REPEATING):
            return True
        pool = str(record.args[0]) if isinstance(record.args, tuple) and record.args else ""
        if pool in self._failing:
            return False
        self._failing.add(pool)
        return True

    def recovered(self, pool: str) -> bool:
        """The pool's node answered: the next failure is news again. True if it was failing."""
        if pool in self._failing:
            self._failing.discard(pool)
            return True
        return False


OUTAGES = OutageFilter()
# A filter only: it changes no handler or level, so applications keep their own logging setup.
logging.getLogger("psycopg.pool").addFilter(OUTAGES)
