"""A local cluster of PostgreSQL nodes for development, demos and tests.

Each node is an initdb'd data directory under ``<dir>/<node>/`` listening on a free
loopback port. PostgreSQL refuses to run as root, so when invoked as root the server
programs run as the unprivileged ``postgres`` user (``runuser``); as any other user they
run as that user. The password is random, lives only in ``<dir>/pgpass`` (mode 0600), and
reaches libpq through ``passfile=`` in the DSN: never on a command line.

A Citus cluster (``citus_workers``) is a coordinator and N workers with the extension
loaded; the nodes reach each other with the same password, read from a copy of the password
file that the server user owns (``PGPASSFILE`` in the servers' environment). The nodes of a
cluster are listed in ``<dir>/nodes.json`` (the config of a Citus cluster names only its
coordinator).
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import secrets
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from shardflow.config import ClusterConfig, NodeConfig, load_config
from shardflow.errors import ConfigurationError
from shardflow.storage.citus_setup import install_citus, join_workers
from shardflow.storage.conninfo import parse_conninfo

log = logging.getLogger("shardflow.cluster")

CONFIG_NAME = "shardflow.toml"
DB_USER = "shardflow"
DB_NAME = "shardflow"
SERVER_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "200",
    "shared_buffers": "256MB",
    # A workflow engine writes all the time: with the default 1GB a node under load ran a
    # checkpoint every 80 s, back to back, and each one's full-page images doubled the WAL
    # (the soak's stall episodes). Timed checkpoints instead, far apart (docs/operations.md).
    "max_wal_size": "8GB",
    "checkpoint_timeout": "15min",
    # The first change of a page after a checkpoint logs the whole page: lz4 shrinks those
    # images, and with them the WAL burst that slowed commits after each checkpoint.
    "wal_compression": "lz4",
    "fsync": "on",
    "synchronous_commit": "on",
    "log_min_messages": "warning",
    "log_line_prefix": "'%m [%p] %u@%d '",
    # One clock for every log: the benchmarks place checkpoints on a run's timeline.
    "log_timezone": "'UTC'",
}
# A Citus node also loads the extension and allows online shard moves (logical replication).
CITUS_SETTINGS = {
    "shared_preload_libraries": "'citus'",
    "wal_level": "logical",
    "max_replication_slots": "20",
    "max_wal_senders": "20",
    "citus.enable_statistics_collection": "off",
}


def find_pg_bin() -> Path:
    """Where initdb and pg_ctl are: $SHARDFLOW_PG_BIN, PATH, or the newest Debian install."""
    if env := os.environ.get("SHARDFLOW_PG_BIN"):
        return Path(env)
    if found := shutil.which("initdb"):
        return Path(found).resolve().parent  # follow symlinks to the real bin directory
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if candidates:
        return candidates[-1].parent
    raise ConfigurationError(
        "PostgreSQL server programs (initdb, pg_ctl) were not found: install them "
        "(apt-get install postgresql) or set SHARDFLOW_PG_BIN to their directory"
    )


def citus_installed() -> bool:
    """Whether the local PostgreSQL has the Citus extension (its control file)."""
    pg_config = find_pg_bin() / "pg_config"
    if not pg_config.exists():
        return False
    sharedir = subprocess.run(
        [str(pg_config), "--sharedir"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return bool(sharedir) and (Path(sharedir) / "extension" / "citus.control").exists()


@dataclass(frozen=True)
class LocalNode:
    name: str
    directory: Path
    port: int

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def log_file(self) -> Path:
        return self.directory / "postgres.log"


class LocalCluster:
    """Creates, starts and stops the nodes of a local cluster in ``directory``."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory).resolve()
        self.pg_bin = find_pg_bin()
        self._run_as = _server_user()

    @property
    def config_path(self) -> Path:
        return self.directory / CONFIG_NAME

    @property
    def passfile(self) -> Path:
        return self.directory / "pgpass"

    @property
    def server_passfile(self) -> Path:
        """The password file the servers use to reach each other (Citus), owned by them."""
        return self.directory / "server.pgpass"

    @property
    def manifest(self) -> Path:
        return self.directory / "nodes.json"

    def exists(self) -> bool:
        return self.config_path.exists()

    def load_config(self) -> ClusterConfig:
        return load_config(self.config_path, environ={})

    def nodes(self) -> list[LocalNode]:
        """Every node of this local cluster (the coordinator and workers of a Citus one)."""
        if self.manifest.exists():
            return [
                LocalNode(n["name"], self.directory / n["name"], int(n["port"]))
                for n in json.loads(self.manifest.read_text())
            ]
        config = self.load_config()
        return [
            LocalNode(n.name, self.directory / n.name, int(parse_conninfo(n.dsn)["port"]))
            for n in config.nodes
        ]

    def node(self, name: str) -> LocalNode:
        for node in self.nodes():
            if node.name == name:
                return node
        raise ConfigurationError(f"local cluster in {self.directory} has no node {name!r}")

    def dsn(self, node: LocalNode) -> str:
        return self._dsn(node)

    def create(
        self,
        *,
        nodes: int,
        partition_count: int,
        schema: str,
        citus_workers: int | None = None,
    ) -> ClusterConfig:
        """initdb ``nodes`` new nodes (or a Citus coordinator and ``citus_workers`` workers),
        start them, and write the cluster config file."""
        citus = citus_workers is not None
        count = (citus_workers or 0) + 1 if citus else nodes
        if count < 1 or (citus and count < 2):
            raise ConfigurationError("a cluster needs at least one node (Citus: one worker)")
        self._prepare_directory()
        password = secrets.token_urlsafe(24)
        self.passfile.write_text(f"127.0.0.1:*:*:{DB_USER}:{password}\n")
        self.passfile.chmod(0o600)
        if citus:
            self._write_server_passfile(password)
        names = (
            ["coordinator", *(f"worker{i}" for i in range(1, count))]
            if citus
            else [f"node{i}" for i in range(1, count + 1)]
        )
        created = [self._new_node(name, password, citus=citus) for name in names]
        self._write_manifest(created)
        if citus:
            join_workers(self._dsn(created[0]), created[0].port, [n.port for n in created[1:]])
        config = ClusterConfig(
            name=self.directory.name,
            schema=schema,
            partition_count=partition_count,
            nodes=tuple(
                NodeConfig(name=n.name, dsn=self._dsn(n))
                for n in (created[:1] if citus else created)
            ),
            local_dir=str(self.directory),
            backend="citus" if citus else "plain",
        )
        self.config_path.write_text(config.to_toml())
        return config

    def _new_node(self, name: str, password: str, *, citus: bool) -> LocalNode:
        node = LocalNode(name, self.directory / name, _free_port())
        self._init_node(node, password, citus=citus)
        self.start_node(node)
        self._create_database(node)
        if citus:
            install_citus(self._dsn(node))
        return node

    def _write_manifest(self, nodes: list[LocalNode]) -> None:
        self.manifest.write_text(
            json.dumps([{"name": n.name, "port": n.port} for n in nodes], indent=2) + "\n"
        )

    def _write_server_passfile(self, password: str) -> None:
        # Any host: Citus's background jobs (shard moves) reach the local node as localhost.
        self.server_passfile.write_text(f"*:*:*:{DB_USER}:{password}\n")
        self.server_passfile.chmod(0o600)
        if self._run_as is not None:
            os.chown(self.server_passfile, self._run_as.pw_uid, self._run_as.pw_gid)

    def add_node(self) -> NodeConfig:
        """initdb and start one more node. A plain cluster's config gains it; a Citus node
        has the extension and still has to be added to Citus (`cluster add-node`)."""
        config = self.load_config()
        citus = config.backend == "citus"
        existing = self.nodes()
        taken = {n.name for n in existing} | {p.name for p in self.directory.iterdir()}
        prefix = "worker" if citus else "node"
        number = len(existing) + (0 if citus else 1)
        while f"{prefix}{number}" in taken:
            number += 1
        node = self._new_node(f"{prefix}{number}", self._password(), citus=citus)
        self._write_manifest([*existing, node])
        added = NodeConfig(name=node.name, dsn=self._dsn(node))
        if not citus:
            self.config_path.write_text(config.replace(nodes=(*config.nodes, added)).to_toml())
        return added

    def forget_node(self, name: str) -> None:
        """Stop a node that left the cluster and drop it from the config file (data kept)."""
        config = self.load_config()
        self.stop_node(self.node(name))
        remaining = tuple(n for n in config.nodes if n.name != name)
        self.config_path.write_text(config.replace(nodes=remaining).to_toml())
        self._write_manifest([n for n in self.nodes() if n.name != name])

    def _password(self) -> str:
        line = self.passfile.read_text().strip()
        return line.rsplit(":", 1)[1]

    def start_all(self) -> None:
        for node in self.nodes():
            self.start_node(node)

    def stop_all(self, *, mode: str = "fast") -> None:
        for node in self.nodes():
            self.stop_node(node, mode=mode)

    def destroy(self) -> None:
        if self.exists():
            self.stop_all(mode="immediate")
        shutil.rmtree(self.directory, ignore_errors=True)

    def is_running(self, node: LocalNode) -> bool:
        result = self._pg_ctl(["status", "-D", str(node.data_dir)], check=False)
        return result.returncode == 0

    def start_node(self, node: LocalNode) -> None:
        if self.is_running(node):
            return
        # Citus nodes connect to each other as the shardflow user: they read the password
        # from the server's own copy of the password file.
        env = {"PGPASSFILE": str(self.server_passfile)} if self.server_passfile.exists() else {}
        self._pg_ctl(
            ["start", "-w", "-t", "60", "-D", str(node.data_dir), "-l", str(node.log_file)],
            env=env,
        )
        log.info("started %s on port %d", node.name, node.port)

    def stop_node(self, node: LocalNode, *, mode: str = "fast") -> None:
        """Stop a node: ``fast`` (clean), or ``immediate`` (like a crash: recovery on start)."""
        if not self.is_running(node):
            return
        self._pg_ctl(["stop", "-w", "-t", "60", "-m", mode, "-D", str(node.data_dir)])

    def _dsn(self, node: LocalNode) -> str:
        return (
            f"host=127.0.0.1 port={node.port} dbname={DB_NAME} user={DB_USER} "
            f"passfile={self.passfile}"
        )

    def _prepare_directory(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._run_as is not None:
            _check_traversable(self.directory, self._run_as)

    def _init_node(self, node: LocalNode, password: str, *, citus: bool = False) -> None:
        node.directory.mkdir(parents=True)
        pwfile = node.directory / "initdb.pw"
        pwfile.write_text(password + "\n")
        pwfile.chmod(0o600)
        if self._run_as is not None:
            for path in (node.directory, pwfile):
                os.chown(path, self._run_as.pw_uid, self._run_as.pw_gid)
        try:
            self._server_cmd(
                [
                    str(self.pg_bin / "initdb"),
                    "-D",
                    str(node.data_dir),
                    "-U",
                    DB_USER,
                    "--pwfile",
                    str(pwfile),
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--no-instructions",
                ]
            )
        finally:
            pwfile.unlink(missing_ok=True)
        settings = dict(
            SERVER_SETTINGS, port=str(node.port), unix_socket_directories=f"'{node.directory}'"
        )
        if citus:
            settings.update(CITUS_SETTINGS)
        conf = "\n".join(f"{k} = {v}" for k, v in settings.items())
        with (node.data_dir / "postgresql.conf").open("a") as fh:
            fh.write(f"\n# shardflow local node\n{conf}\n")

    def _create_database(self, node: LocalNode) -> None:
        # Over the node's own Unix socket, where the server user is trusted: no password.
        self._server_cmd(
            [
                str(self.pg_bin / "createdb"),
                "-h",
                str(node.directory),
                "-p",
                str(node.port),
                "-U",
                DB_USER,
                DB_NAME,
            ]
        )

    def _pg_ctl(
        self, args: list[str], *, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self._server_cmd([str(self.pg_bin / "pg_ctl"), *args], check=check, env=env)

    def _server_cmd(
        self, argv: list[str], *, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        if env:
            argv = ["env", *(f"{k}={v}" for k, v in env.items()), *argv]
        if self._run_as is not None:
            argv = ["runuser", "-u", self._run_as.pw_name, "--", *argv]
        result = subprocess.run(
            argv, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
        )
        if check and result.returncode != 0:
            raise ConfigurationError(
                f"{Path(argv[argv.index('--') + 1] if '--' in argv else argv[0]).name} failed "
                f"(exit {result.returncode}): {(result.stderr or result.stdout).strip()[-800:]}"
            )
        return result


def _server_user() -> pwd.struct_passwd | None:
    """The user that runs the servers when we are root; None when we are not root."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get("SHARDFLOW_PG_USER", "postgres")
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise ConfigurationError(
            f"running as root, PostgreSQL must run as another user, but user {name!r} does not "
            "exist: create it (apt-get install postgresql does) or set SHARDFLOW_PG_USER"
        ) from None


def _check_traversable(directory: Path, user: pwd.struct_passwd) -> None:
    for parent in [directory, *directory.parents]:
        mode = parent.stat().st_mode
        if parent.stat().st_uid != user.pw_uid and not mode & 0o001:
            raise ConfigurationError(
                f"the PostgreSQL user {user.pw_name!r} cannot enter {parent}; put the cluster "
                "in a directory it can reach, e.g. --dir /tmp/shardflow-cluster"
            )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
