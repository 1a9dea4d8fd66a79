"""The SQL lives in sql/: every named query is used, none is missing, and the wheel has them."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from shardflow.storage.queries import QueryBook, dialect_only_queries, migrations, raw_queries

PACKAGE = Path(__file__).resolve().parent.parent / "shardflow"


def _string_constants() -> set[str]:
    found = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.add(node.value)
    return found


def test_every_query_is_used_and_every_used_name_exists() -> None:
    names = set(raw_queries("plain")) | set(raw_queries("citus"))
    constants = _string_constants()
    assert names - constants == set(), "queries nobody runs: delete them"
    used = set()
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        used |= set(re.findall(r'\.(?:run|fetch)\((?:conn, )?"([a-z0-9_]+)"', text))
        used |= set(re.findall(r'queries\["([a-z0-9_]+)"\]', text))
        used |= set(re.findall(r'"((?:copy_out|copy_in|delete_partition)_[a-z]+)"', text))
    assert used, "the scan found no query calls: update this test"
    assert used - names == set(), "code runs queries that sql/queries does not define"


def test_no_sql_text_in_python_modules() -> None:
    pattern = re.compile(r"\b(SELECT|INSERT INTO|UPDATE|DELETE FROM)\s+\S")
    offenders = [
        str(path)
        for path in PACKAGE.rglob("*.py")
        if any(pattern.search(c) for c in _constants_of(path))
    ]
    assert offenders == []


def _constants_of(path: Path) -> list[str]:
    return [
        n.value
        for n in ast.walk(ast.parse(path.read_text()))
        if isinstance(n, ast.Constant) and isinstance(n.value, str)
    ]


def test_unknown_query_name_is_a_clear_error() -> None:
    with pytest.raises(KeyError, match="sql/queries"):
        QueryBook("shardflow")["no_such_query"]


def test_migrations_are_numbered_without_gaps() -> None:
    versions = [m.version for m in migrations()]
    assert versions == list(range(1, len(versions) + 1))


def test_queries_render_schema_as_identifier() -> None:
    book = QueryBook("other_schema")
    assert b'"other_schema".workflows' in book["claim"]


@pytest.mark.timeout(180)
def test_wheel_carries_the_sql(tmp_path: Path) -> None:
    root = PACKAGE.parent
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(root),
        ],
        check=True,
        capture_output=True,
        timeout=170,
    )
    (wheel,) = tmp_path.glob("shardflow-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for path in (root / "sql").rglob("*.sql"):
        assert f"shardflow/sql/{path.relative_to(root / 'sql')}" in names


def test_citus_blocks_replace_plain_ones_or_are_used() -> None:
    """A Citus block either stands in for the plain query of the same name (same parameters
    plus, at most, the node's partitions) or is a Citus-only statement the code runs."""
    plain = raw_queries("plain")
    constants = _string_constants()
    for name, text in dialect_only_queries("citus").items():
        if name in plain:
            extra = set(re.findall(r"%\((\w+)\)s", text)) - set(
                re.findall(r"%\((\w+)\)s", plain[name])
            )
            assert extra <= {"partitions"}, f"citus {name} needs parameters {extra}"
        else:
            assert name in constants, f"citus-only query {name} is never run"
