"""Connection strings: parse, refuse embedded passwords, redact for display."""

from __future__ import annotations

from typing import Any

from psycopg import conninfo as _conninfo

from shardflow.errors import ConfigurationError

_SECRET_KEYS = frozenset({"password", "sslpassword"})


def parse_conninfo(dsn: str) -> dict[str, Any]:
    """Split a libpq DSN (key=value or URI) into its parameters, or raise ConfigurationError."""
    try:
        return dict(_conninfo.conninfo_to_dict(dsn))
    except Exception as exc:  # psycopg raises ProgrammingError; never echo the DSN itself
        raise ConfigurationError(
            "a node connection string could not be parsed; use libpq key=value form, e.g. "
            "'host=127.0.0.1 port=5432 dbname=app user=shardflow'"
        ) from exc


def check_no_password(dsn: str, *, where: str) -> None:
    """Refuse a DSN that carries a secret: it would end up in argv, files and logs."""
    if _SECRET_KEYS & parse_conninfo(dsn).keys():
        raise ConfigurationError(
            f"the connection string for {where} contains a password; remove it and supply the "
            "password through PGPASSWORD, a password file (passfile=... or PGPASSFILE) or a libpq "
            "service file (service=...)"
        )


def redact(dsn: str) -> str:
    """The DSN with every secret replaced by ``***``, safe to print or log."""
    try:
        params = parse_conninfo(dsn)
    except ConfigurationError:
        return "<unparseable connection string>"
    for key in _SECRET_KEYS & params.keys():
        params[key] = "***"
    return _conninfo.make_conninfo(**params)


def display_address(dsn: str) -> str:
    """A short ``host:port/dbname`` label for tables and log fields."""
    params = parse_conninfo(dsn)
    host = params.get("host") or params.get("hostaddr") or "localhost"
    return f"{host}:{params.get('port', 5432)}/{params.get('dbname', '')}"


def public_conninfo(dsn: str) -> dict[str, str]:
    """The DSN's parameters without secrets: what a node may publish in the placement."""
    return {k: str(v) for k, v in parse_conninfo(dsn).items() if k not in _SECRET_KEYS}


def make_conninfo(params: dict[str, str]) -> str:
    """Build a DSN from parameters (the inverse of :func:`public_conninfo`)."""
    return _conninfo.make_conninfo(**params)
