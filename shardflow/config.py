"""Configuration: one frozen, validated object loaded from a TOML file and ``SHARDFLOW_*``.

Precedence: explicit arguments > environment > file > defaults. Passwords are never part of
the configuration: connection strings that carry one are refused (see storage.conninfo).
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shardflow.errors import ConfigurationError
from shardflow.storage.conninfo import (
    check_no_password,
    parse_conninfo,
    redact,
)
from shardflow.timebounds import retention_seconds

ENV_PREFIX = "SHARDFLOW_"
BACKENDS = ("plain", "citus")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")


@dataclass(frozen=True, kw_only=True)
class NodeConfig:
    """One PostgreSQL node: a stable name, a password-free DSN, and a placement weight."""

    name: str
    dsn: str
    weight: int = 1

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,63}", self.name):
            raise ConfigurationError(
                f"node name {self.name!r} is invalid: use 1-63 letters, digits, '.', '_' or '-'"
            )
        if not 1 <= self.weight <= 1000:
            raise ConfigurationError(f"node {self.name}: weight must be between 1 and 1000")
        check_no_password(self.dsn, where=f"node {self.name}")


@dataclass(frozen=True, kw_only=True)
class WorkerSettings:
    """How a worker claims, leases and polls. Durations are seconds."""

    # Workflows run at once, shared equally among the nodes the worker serves.
    concurrency: int = 32
    lease_seconds: float = 30.0
    heartbeat_seconds: float = 10.0
    poll_seconds: float = 1.0
    reaper_seconds: float = 5.0
    membership_seconds: float = 5.0
    # A workflow whose lease expires this many times (its worker died each time) is
    # dead-lettered instead of run again: a poison workflow cannot crash workers forever.
    max_lease_expiries: int = 5
    claim_batch: int = 32
    shutdown_grace_seconds: float = 10.0
    # Longest a run waits for one of its checkpoint or final writes (queue and commit): past
    # it the run is abandoned loudly and its lease left to expire, so another worker resumes
    # the workflow instead of a live worker renewing a stuck run forever.
    write_timeout_seconds: float = 30.0
    # Retention: one worker per node removes finished workflows past their retention every
    # gc_seconds, gc_batch at a time (each batch one short transaction on one partition).
    gc_seconds: float = 60.0
    gc_batch: int = 500

    def __post_init__(self) -> None:
        if self.gc_seconds <= 0 or self.gc_batch < 1:
            raise ConfigurationError(
                f"worker.gc_seconds must be > 0 and worker.gc_batch at least 1 (got "
                f"{self.gc_seconds} and {self.gc_batch})"
            )
        if self.concurrency < 1:
            raise ConfigurationError("worker.concurrency must be at least 1")
        if self.max_lease_expiries < 1:
            raise ConfigurationError("worker.max_lease_expiries must be at least 1")
        if self.claim_batch < 1:
            raise ConfigurationError("worker.claim_batch must be at least 1")
        if not 0 < self.heartbeat_seconds < self.lease_seconds:
            raise ConfigurationError(
                "worker.heartbeat_seconds must be positive and shorter than worker.lease_seconds "
                "(a third of it is a good choice)"
            )
        if (
            min(
                self.poll_seconds,
                self.reaper_seconds,
                self.membership_seconds,
                self.write_timeout_seconds,
            )
            <= 0
        ):
            raise ConfigurationError(
                "worker.poll_seconds, reaper_seconds, membership_seconds and "
                "write_timeout_seconds must be > 0"
            )


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Input limits, checked before anything is written."""

    max_payload_bytes: int = 1024 * 1024
    max_id_length: int = 200

    def __post_init__(self) -> None:
        if self.max_payload_bytes < 1 or self.max_id_length < 1:
            raise ConfigurationError("limits must be positive")


@dataclass(frozen=True, kw_only=True)
class ClusterConfig:
    """Everything a client, worker or CLI needs to reach a shardflow cluster."""

    name: str = "shardflow"
    # "production" requires TLS with certificate and host name checks on every node
    # (sslmode=verify-full unless the DSN says verify-ca or verify-full itself).
    profile: str = "development"
    schema: str = "shardflow"
    partition_count: int = 256
    connect_timeout: float = 5.0
    # Longest a client or worker call may take on one node before it is NodeUnavailable.
    operation_timeout: float = 30.0
    pool_max_size: int = 10
    nodes: tuple[NodeConfig, ...] = ()
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    limits: Limits = field(default_factory=Limits)
    # Where `cluster up` keeps local node data; empty for clusters of existing servers.
    local_dir: str = ""
    # "plain": independent PostgreSQL nodes, shardflow places and moves partitions.
    # "citus": one Citus cluster; `nodes` names its coordinator, Citus places and moves shards.
    backend: str = "plain"
    # Citus: "direct" sends each call to the worker holding the partition's shard (faster);
    # "coordinator" sends everything through the coordinator (one entry point to open).
    citus_routing: str = "direct"
    # The watchdog: `cluster status` reports a running workflow whose lease is being renewed
    # but that has recorded nothing for longer than this (seconds) as stalled.
    stall_seconds: float = 300.0
    # How long finished (succeeded, failed, cancelled) workflows are kept, unless their
    # workflow says otherwise (@app.workflow(retention=...)): "30s", "15m", "2h", "7d", "1w"
    # or "forever". Dead-lettered ones are kept until requeued or purged.
    retention: str = "7d"

    def __post_init__(self) -> None:
        retention_seconds(self.retention, what="retention", error=ConfigurationError)
        if not _NAME_RE.match(self.schema):
            raise ConfigurationError(
                f"schema {self.schema!r} is invalid: use lower-case letters, digits and '_'"
            )
        p = self.partition_count
        if p < 1 or p > 65536 or p & (p - 1):
            raise ConfigurationError("partition_count must be a power of two between 1 and 65536")
        if min(self.connect_timeout, self.operation_timeout, self.stall_seconds) <= 0:
            raise ConfigurationError(
                "connect_timeout, operation_timeout and stall_seconds must be positive"
            )
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"node names must be unique, got {names}")
        if self.backend not in BACKENDS:
            raise ConfigurationError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.citus_routing not in ("direct", "coordinator"):
            raise ConfigurationError(
                f"citus_routing must be 'direct' or 'coordinator', got {self.citus_routing!r}"
            )
        if self.profile not in PROFILES:
            raise ConfigurationError(f"profile must be one of {PROFILES}, got {self.profile!r}")
        if self.profile == "production":
            object.__setattr__(self, "nodes", tuple(_require_tls(n) for n in self.nodes))

    @property
    def retention_seconds(self) -> float | None:
        """The default retention of finished workflows in seconds (None: for ever)."""
        return retention_seconds(self.retention, what="retention", error=ConfigurationError)

    def node(self, name: str) -> NodeConfig:
        """The node called ``name``, or ConfigurationError naming the known ones."""
        for node in self.nodes:
            if node.name == name:
                return node
        known = ", ".join(n.name for n in self.nodes) or "none"
        raise ConfigurationError(f"no node named {name!r} in the configuration (known: {known})")

    def require_nodes(self) -> None:
        """Raise a helpful error when no node is configured."""
        if not self.nodes:
            raise ConfigurationError(
                "no nodes configured: pass --config FILE (written by `shardflow cluster up`), "
                "set SHARDFLOW_CONFIG, or set SHARDFLOW_NODES='name=dsn;name=dsn'"
            )

    def replace(self, **changes: Any) -> ClusterConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def redacted(self) -> dict[str, Any]:
        """A plain dict for display with every secret redacted."""
        data = dataclasses.asdict(self)
        data["nodes"] = [
            {"name": n.name, "dsn": redact(n.dsn), "weight": n.weight} for n in self.nodes
        ]
        return data

    def to_toml(self) -> str:
        """Serialise to the TOML format :func:`load_config` reads."""
        lines = [
            f"name = {_toml_value(self.name)}",
            f"profile = {_toml_value(self.profile)}",
            f"schema = {_toml_value(self.schema)}",
            f"partition_count = {self.partition_count}",
            f"connect_timeout = {self.connect_timeout}",
            f"operation_timeout = {self.operation_timeout}",
            f"pool_max_size = {self.pool_max_size}",
            f"local_dir = {_toml_value(self.local_dir)}",
            f"backend = {_toml_value(self.backend)}",
            f"citus_routing = {_toml_value(self.citus_routing)}",
            f"stall_seconds = {self.stall_seconds}",
            f"retention = {_toml_value(self.retention)}",
        ]
        for section in ("worker", "limits"):
            lines += ["", f"[{section}]"]
            for key, value in dataclasses.asdict(getattr(self, section)).items():
                lines.append(f"{key} = {_toml_value(value)}")
        for node in self.nodes:
            lines += ["", "[[nodes]]", f"name = {_toml_value(node.name)}"]
            lines += [f"dsn = {_toml_value(node.dsn)}", f"weight = {node.weight}"]
        return "\n".join(lines) + "\n"


PROFILES = ("development", "production")
_VERIFYING_SSLMODES = ("verify-ca", "verify-full")


def _require_tls(node: NodeConfig) -> NodeConfig:
    """Production: TLS that checks the server's certificate; verify-full when unspecified."""
    sslmode = parse_conninfo(node.dsn).get("sslmode")
    if sslmode is None:
        return NodeConfig(name=node.name, dsn=f"{node.dsn} sslmode=verify-full", weight=node.weight)
    if sslmode not in _VERIFYING_SSLMODES:
        raise ConfigurationError(
            f"node {node.name}: the production profile needs sslmode=verify-full (or "
            f"verify-ca), not {sslmode!r}; give sslrootcert= the CA that signed the server "
            "certificates"
        )
    return node


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def load_config(
    path: str | Path | None = None, *, environ: Mapping[str, str] | None = None
) -> ClusterConfig:
    """Load the configuration from ``path`` (or ``$SHARDFLOW_CONFIG``) and the environment."""
    env = os.environ if environ is None else environ
    path = path or env.get(ENV_PREFIX + "CONFIG") or None
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigurationError(
                f"config file {path} does not exist: create a cluster with `shardflow cluster up` "
                "or point --config / SHARDFLOW_CONFIG at an existing file"
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"config file {path} is not valid TOML: {exc}") from None
    return config_from_dict(_apply_env(data, env))


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    if nodes := env.get(ENV_PREFIX + "NODES"):
        merged["nodes"] = _parse_nodes_env(nodes)
    for fld in dataclasses.fields(ClusterConfig):
        if fld.name in ("nodes", "worker", "limits"):
            continue
        if (raw := env.get(ENV_PREFIX + fld.name.upper())) is not None:
            merged[fld.name] = raw
    for section, cls in (("worker", WorkerSettings), ("limits", Limits)):
        for fld in dataclasses.fields(cls):
            key = f"{ENV_PREFIX}{section.upper()}_{fld.name.upper()}"
            if (raw := env.get(key)) is not None:
                merged.setdefault(section, {})[fld.name] = raw
    return merged


def _parse_nodes_env(text: str) -> list[dict[str, Any]]:
    nodes = []
    for item in filter(None, (part.strip() for part in text.split(";"))):
        name, sep, dsn = item.partition("=")
        if not sep or not dsn.strip():
            raise ConfigurationError(
                "SHARDFLOW_NODES must look like 'node1=host=... port=...;node2=host=...'"
            )
        nodes.append({"name": name.strip(), "dsn": dsn.strip()})
    return nodes


def config_from_dict(data: Mapping[str, Any]) -> ClusterConfig:
    """Build and validate a ClusterConfig from plain data (strings are coerced)."""
    known = {f.name: f for f in dataclasses.fields(ClusterConfig)}
    unknown = set(data) - set(known)
    if unknown:
        raise ConfigurationError(f"unknown configuration keys: {sorted(unknown)}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key == "nodes":
            kwargs["nodes"] = tuple(_build(NodeConfig, n, "nodes") for n in value)
        elif key == "worker":
            kwargs["worker"] = _build(WorkerSettings, value, "worker")
        elif key == "limits":
            kwargs["limits"] = _build(Limits, value, "limits")
        else:
            kwargs[key] = _coerce(known[key].type, value, key)
    return ClusterConfig(**kwargs)


def _build(cls: type[Any], values: Mapping[str, Any], section: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ConfigurationError(f"unknown keys in [{section}]: {sorted(unknown)}")
    try:
        return cls(**{k: _coerce(fields[k].type, v, f"{section}.{k}") for k, v in values.items()})
    except TypeError as exc:
        raise ConfigurationError(f"[{section}] is incomplete: {exc}") from None


def _coerce(type_name: object, value: Any, key: str) -> Any:
    target = {"int": int, "float": float, "str": str}.get(str(type_name))
    if target is None or (isinstance(value, target) and not isinstance(value, bool)):
        return value
    try:
        return target(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{key} must be {type_name}, got {value!r}") from None
