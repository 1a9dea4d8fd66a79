"""The replay engine: workflow and step definitions, the workflow context, the runner."""

from __future__ import annotations

from shardflow.engine.app import App, StepDef, WorkflowDef
from shardflow.engine.context import StepInfo, WorkflowContext, current_step

__all__ = ["App", "StepDef", "StepInfo", "WorkflowContext", "WorkflowDef", "current_step"]
