"""Checks of an app's queues against the cluster's settings, made when a worker starts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shardflow.errors import ConfigurationError

if TYPE_CHECKING:
    from shardflow.engine.app import App


def check_rate_windows_kept(app: App, default_retention: float | None) -> None:
    """A rate limit counts the admissions of its window from the workflows' rows: a workflow
    removed by retention before its admission left the window would no longer count. Refuse
    a rate-limited queue whose workflows are kept less than its period."""
    for wf in app.workflows.values():
        queue = app.queues.get(wf.queue) if wf.queue else None
        if queue is None or queue.period_seconds is None:
            continue
        kept = wf.retention_seconds(default_retention)
        if kept is not None and kept < queue.period_seconds:
            raise ConfigurationError(
                f"workflow {wf.name!r} is kept {kept:g}s after it ends, less than the "
                f"{queue.period_seconds:g}s rate window of its queue {queue.name!r}, whose "
                "limit counts the window's workflows: give it a retention of at least the "
                "period (@app.workflow(retention=...)), or a shorter period"
            )
