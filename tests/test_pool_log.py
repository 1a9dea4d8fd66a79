"""One warning per outage from the connection pools (issue 9: psycopg_pool repeated "error
connecting in 'shardflow-nodeX'" on the client's stderr for as long as a node was down)."""

from __future__ import annotations

import logging

from shardflow.storage.pool_log import OutageFilter


def _record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("psycopg.pool", logging.WARNING, __file__, 1, msg, args, None)


def test_repeated_connection_errors_pass_once_per_outage_and_pool() -> None:
    outages = OutageFilter()
    error = "error connecting in %r: %s"
    seen = [
        outages.filter(_record(error, "shardflow-node1", "refused")),
        outages.filter(_record(error, "shardflow-node1", "refused")),
        outages.filter(_record("reconnection attempt in pool %r failed", "shardflow-node1")),
        outages.filter(_record(error, "shardflow-node2", "refused")),
        outages.filter(_record("discarding broken connection: %s", "conn")),
    ]
    assert seen == [True, False, False, True, True]
    assert outages.recovered("shardflow-node1") is True
    assert outages.recovered("shardflow-node1") is False  # one "reachable again" line
    assert outages.filter(_record(error, "shardflow-node1", "refused")) is True


def test_the_filter_sits_on_psycopg_pools_logger() -> None:
    from shardflow.storage.pool_log import OUTAGES

    assert OUTAGES in logging.getLogger("psycopg.pool").filters
