"""shardflow: durable Python workflows on a cluster of PostgreSQL nodes.

Workflows are hash-partitioned across nodes; every write commits in one local transaction on
the node that owns the workflow's partition, fenced by that ownership.
"""

from __future__ import annotations

from shardflow.client import Client
from shardflow.config import ClusterConfig, NodeConfig, load_config
from shardflow.engine import App, StepInfo, WorkflowContext, current_step
from shardflow.errors import (
    ChildWorkflowFailed,
    ClusterNotInitialized,
    ConfigurationError,
    EventTimeout,
    InvalidInput,
    InvalidWorkflowId,
    NodeUnavailable,
    NonDeterminismError,
    NotRetryable,
    PartitionMoved,
    PayloadNotSerializable,
    PayloadTooLarge,
    ResultTimeout,
    ScheduleNotFound,
    ShardflowError,
    SignalRefused,
    SignalTimeout,
    StepFailedError,
    UnknownWorkflow,
    WorkflowCancelled,
    WorkflowConflict,
    WorkflowFailed,
    WorkflowNotFound,
    WorkflowTimeout,
    WrongNode,
)
from shardflow.handle import WorkflowHandle
from shardflow.listing import WorkflowPage
from shardflow.queues import Queue
from shardflow.storage.records import StepRecord, WorkflowRecord
from shardflow.sync import SyncClient
from shardflow.transactional import OwningNode
from shardflow.worker import Worker

__version__ = "0.1.0"

__all__ = [
    "App",
    "ChildWorkflowFailed",
    "Client",
    "ClusterConfig",
    "ClusterNotInitialized",
    "ConfigurationError",
    "EventTimeout",
    "InvalidInput",
    "InvalidWorkflowId",
    "NodeConfig",
    "NodeUnavailable",
    "NonDeterminismError",
    "NotRetryable",
    "OwningNode",
    "PartitionMoved",
    "PayloadNotSerializable",
    "PayloadTooLarge",
    "Queue",
    "ResultTimeout",
    "ScheduleNotFound",
    "ShardflowError",
    "SignalRefused",
    "SignalTimeout",
    "StepFailedError",
    "StepInfo",
    "StepRecord",
    "SyncClient",
    "UnknownWorkflow",
    "Worker",
    "WorkflowCancelled",
    "WorkflowConflict",
    "WorkflowContext",
    "WorkflowFailed",
    "WorkflowHandle",
    "WorkflowNotFound",
    "WorkflowPage",
    "WorkflowRecord",
    "WorkflowTimeout",
    "WrongNode",
    "current_step",
    "load_config",
]
