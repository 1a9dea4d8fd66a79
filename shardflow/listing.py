"""``client.list()``: workflows across the nodes, newest first, a page at a time (the cursor
is the last row's creation time and id)."""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from shardflow.engine.codec import check_identifier
from shardflow.errors import InvalidInput, NodeUnavailable
from shardflow.storage import ClientStore
from shardflow.storage.records import STATUSES, WorkflowRecord
from shardflow.timebounds import check_time_range

if TYPE_CHECKING:
    from shardflow.client import Client


@dataclass(frozen=True)
class WorkflowPage:
    """One page of ``list()``: newest first; pass ``next_cursor`` to get the next page.

    ``unavailable_nodes`` names nodes that could not be read: the page lacks their workflows.
    """

    items: list[WorkflowRecord]
    next_cursor: str | None
    unavailable_nodes: list[str]


async def list_workflows(
    client: Client,
    *,
    status: str | None,
    name: str | None,
    limit: int,
    cursor: str | None,
    node: str | None,
    created_since: datetime | None,
    created_until: datetime | None,
    version: str | None,
) -> WorkflowPage:
    """``Client.list``: one read per node (in parallel), merged newest first."""
    check_time_range(created_since, created_until)
    if status is not None and status not in STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
    if not 1 <= limit <= 1000:
        raise InvalidInput("limit must be between 1 and 1000")
    after = _decode_cursor(cursor) if cursor else None
    placement = client.placement
    names = list(placement.counts())
    if node is not None:
        if node not in names:
            raise InvalidInput(
                f"no node {node!r} in the placement; the nodes are {', '.join(names)}"
            )
        names = [node]
    answers = await asyncio.gather(
        *(
            ClientStore(client.topology.connector(n)).list_workflows(
                status=status,
                name=name,
                limit=limit,
                after=after,
                created_since=created_since,
                created_until=created_until,
                app_version=version,
                partitions=placement.partitions_of(n),
            )
            for n in names
        ),
        return_exceptions=True,
    )
    items: list[WorkflowRecord] = []
    unavailable = []
    for node, answer in zip(names, answers, strict=True):
        if isinstance(answer, NodeUnavailable):
            unavailable.append(node)
        elif isinstance(answer, BaseException):
            raise answer
        else:
            items.extend(answer)
    items.sort(key=lambda r: (r.created_at, r.workflow_id), reverse=True)
    page = items[:limit]
    next_cursor = None
    if len(items) > limit or (len(page) == limit and page):
        last = page[-1]
        assert last.created_at is not None
        next_cursor = _encode_cursor(last.created_at, last.workflow_id)
    return WorkflowPage(items=page, next_cursor=next_cursor, unavailable_nodes=unavailable)


def _encode_cursor(created_at: datetime, workflow_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), workflow_id]).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    bad = InvalidInput("cursor is not one that list() returned; start without it")
    try:
        decoded = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        if not (isinstance(decoded, list) and len(decoded) == 2):
            raise bad
        created, wf_id = decoded
        if not (isinstance(created, str) and isinstance(wf_id, str)):
            raise bad
        at = datetime.fromisoformat(created)
        check_identifier(wf_id, what="cursor", max_length=10_000)
    except (ValueError, TypeError, UnicodeError) as exc:
        raise bad from exc
    if at.tzinfo is None:
        raise bad
    return at, wf_id
