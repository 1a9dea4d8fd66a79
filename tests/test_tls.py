"""TLS: libpq settings pass through; the production profile insists on verify-full; a server
certificate for the wrong host is refused and the right one accepted (throwaway CA)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from shardflow import NodeUnavailable
from shardflow.cluster.local import LocalCluster
from shardflow.config import ClusterConfig, NodeConfig
from shardflow.errors import ConfigurationError
from shardflow.storage import AdminStore, NodeConnector
from tests.helpers import run

DSN = "host=127.0.0.1 port=5432 dbname=app user=shardflow"


def test_production_profile_requires_verify_full() -> None:
    config = ClusterConfig(profile="production", nodes=(NodeConfig(name="n", dsn=DSN),))
    assert "sslmode=verify-full" in config.nodes[0].dsn
    kept = ClusterConfig(
        profile="production", nodes=(NodeConfig(name="n", dsn=DSN + " sslmode=verify-ca"),)
    )
    assert "verify-ca" in kept.nodes[0].dsn
    for weak in ("disable", "prefer", "require"):
        with pytest.raises(ConfigurationError, match="verify-full"):
            ClusterConfig(
                profile="production", nodes=(NodeConfig(name="n", dsn=f"{DSN} sslmode={weak}"),)
            )
    assert "sslmode" not in ClusterConfig(nodes=(NodeConfig(name="n", dsn=DSN),)).nodes[0].dsn


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _server_cert(ca: Path, name: str, san: str) -> None:
    _openssl(
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        "-subj",
        f"/CN={name}",
        cwd=ca,
    )
    (ca / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        f"{name}.crt",
        "-extfile",
        f"{name}.ext",
        cwd=ca,
    )


@pytest.fixture(scope="module")
def tls_node() -> Iterator[tuple[LocalCluster, Path]]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (apt-get install openssl)")
    root = Path(tempfile.mkdtemp(prefix="shardflow-tls-", dir="/tmp"))
    root.chmod(0o755)
    ca = root / "ca"
    ca.mkdir()
    _openssl(
        "req",
        "-x509",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=shardflow-test-ca",
        cwd=ca,
    )
    _server_cert(ca, "right", "IP:127.0.0.1")
    _server_cert(ca, "wrong", "DNS:wrong.example.com")
    local = LocalCluster(root / "cluster")
    local.create(nodes=1, partition_count=8, schema="shardflow")
    try:
        yield local, ca
    finally:
        local.destroy()
        shutil.rmtree(root, ignore_errors=True)


def _serve_cert(local: LocalCluster, ca: Path, name: str) -> None:
    node = local.nodes()[0]
    for suffix in ("crt", "key"):
        target = node.data_dir / f"server.{suffix}"
        shutil.copy(ca / f"{name}.{suffix}", target)
        target.chmod(0o600)
        if os.geteuid() == 0:
            user = pwd.getpwnam(os.environ.get("SHARDFLOW_PG_USER", "postgres"))
            os.chown(target, user.pw_uid, user.pw_gid)
    conf = node.data_dir / "postgresql.conf"
    if "ssl = on" not in conf.read_text():
        with conf.open("a") as fh:
            fh.write("ssl = on\n")
    local.stop_node(node)
    local.start_node(node)


def _connect_and_query(local: LocalCluster, ca: Path) -> None:
    node = local.load_config().nodes[0]
    dsn = f"{node.dsn} sslmode=verify-full sslrootcert={ca / 'ca.crt'}"

    async def go() -> None:
        async with NodeConnector(
            name="tls", dsn=dsn, schema="shardflow", connect_timeout=2, operation_timeout=10
        ) as conn:
            await AdminStore(conn).hygiene()

    run(go())


def test_right_certificate_accepted_wrong_host_refused(
    tls_node: tuple[LocalCluster, Path],
) -> None:
    local, ca = tls_node
    _serve_cert(local, ca, "right")
    _connect_and_query(local, ca)
    _serve_cert(local, ca, "wrong")
    with pytest.raises(NodeUnavailable, match=r"certificate|does not match"):
        _connect_and_query(local, ca)
