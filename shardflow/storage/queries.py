"""Named SQL queries and migrations, loaded once from the ``sql/`` directory.

A query file holds blocks that start with ``-- name: <query_name>``. ``{schema}`` and
``{channel}`` are identifiers filled in through ``psycopg.sql``; values are always bound
parameters. The wheel carries the files as ``shardflow/sql``; a checkout has them at the
top of the repository.

Dialects: ``plain`` (independent PostgreSQL nodes) reads ``sql/queries/*.sql``; ``citus``
reads the same files, then ``sql/queries/citus/*.sql``, whose blocks replace the plain ones of
the same name (only statements Citus refuses or runs badly have a Citus block) or add
Citus-only ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from psycopg import sql

_NAME_LINE = re.compile(r"^-- name: ([a-z0-9_]+)\s*$", re.MULTILINE)
_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


def sql_dir() -> Path:
    """Where the SQL files are: inside the installed package, or in the checkout."""
    package_dir = Path(__file__).resolve().parent.parent
    for candidate in (package_dir / "sql", package_dir.parent / "sql"):
        if (candidate / "queries").is_dir():
            return candidate
    raise RuntimeError(f"shardflow's sql/ directory is missing next to {package_dir}; reinstall")


DIALECTS = ("plain", "citus")


@cache
def raw_queries(dialect: str = "plain") -> dict[str, str]:
    """Every named query's text for ``dialect``, by name (placeholders not yet filled)."""
    if dialect not in DIALECTS:
        raise ValueError(f"unknown SQL dialect {dialect!r}: one of {DIALECTS}")
    queries = _read_blocks(sql_dir() / "queries")
    if dialect != "plain":
        queries.update(_read_blocks(sql_dir() / "queries" / dialect))
    return queries


def dialect_only_queries(dialect: str) -> dict[str, str]:
    """The blocks ``dialect`` adds or replaces (for tests: each must be used or replace one)."""
    return _read_blocks(sql_dir() / "queries" / dialect)


def _read_blocks(directory: Path) -> dict[str, str]:
    queries: dict[str, str] = {}
    for path in sorted(directory.glob("*.sql")):
        text = path.read_text()
        marks = list(_NAME_LINE.finditer(text))
        for mark, following in zip(marks, [*marks[1:], None], strict=True):
            end = following.start() if following else len(text)
            name = mark.group(1)
            if name in queries:
                raise RuntimeError(f"query {name!r} is defined twice (second in {path.name})")
            queries[name] = text[mark.end() : end].strip()
    return queries


def render(text: str, schema: str, *, roles: dict[str, str] | None = None) -> bytes:
    """Fill the identifier placeholders of ``text`` for ``schema`` (and role names).

    ``roles`` maps a placeholder to a role name: ``{admin}`` becomes the quoted identifier
    and ``{admin_name}`` the quoted string literal.
    """
    extra: dict[str, sql.Composable] = {}
    for key, role in (roles or {}).items():
        extra[key] = sql.Identifier(role)
        extra[f"{key}_name"] = sql.Literal(role)
    composed = sql.SQL(text).format(
        schema=sql.Identifier(schema), channel=sql.Identifier(work_channel(schema)), **extra
    )
    return composed.as_string(None).encode()


def work_channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel that announces runnable work for ``schema``."""
    return f"{schema}_work"


class QueryBook:
    """The named queries rendered for one schema and dialect; ``book["claim"]`` is ready."""

    def __init__(self, schema: str, dialect: str = "plain"):
        self.schema = schema
        self.dialect = dialect
        self._rendered = {name: render(text, schema) for name, text in raw_queries(dialect).items()}

    def __getitem__(self, name: str) -> bytes:
        try:
            return self._rendered[name]
        except KeyError:
            raise KeyError(f"unknown query {name!r}: add it to a file in sql/queries") from None


@dataclass(frozen=True)
class Migration:
    """One numbered, forward-only schema migration file."""

    version: int
    name: str
    text: str


@cache
def migrations() -> tuple[Migration, ...]:
    """All migrations in version order; the numbering must have no gaps."""
    found = []
    for path in sorted((sql_dir() / "migrations").glob("*.sql")):
        match = _MIGRATION_FILE.match(path.name)
        if not match:
            raise RuntimeError(f"migration file {path.name} is not named NNNN_name.sql")
        found.append(Migration(int(match.group(1)), match.group(2), path.read_text()))
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise RuntimeError(f"migration {expected:04d} is missing (found {migration.version})")
    return tuple(found)


def roles_script_text() -> str:
    """``sql/roles.sql``: the least-privilege roles and their grants."""
    return (sql_dir() / "roles.sql").read_text()


def canonical_schema_text() -> str:
    """``sql/schema.sql``: the whole current schema in one file."""
    return (sql_dir() / "schema.sql").read_text()
