"""The README is executable documentation: its shell and Python blocks run as written.

Like Rust's doc tests: every ```sh block runs, in order, in one bash session (so `export`s
and background workers carry over), in a fresh directory next to the repository's virtualenv,
against a fresh local cluster (the README's /tmp/shardflow-demo is swapped for it). A ```python
block whose first line is `# NAME.py` is written to that file first; other Python blocks are
fragments and must at least compile. A block preceded by `<!-- readme-test: skip (why) -->`
is left out (the two set-up commands, which CI runs itself); one preceded by
`<!-- readme-test: citus ... -->` runs where the Citus extension is installed (always in CI).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shardflow.cluster.local import citus_installed
from tests.helpers import REPO

README = REPO / "README.md"
DEMO_DIR = "/tmp/shardflow-demo"
CITUS_DIR = "/tmp/shardflow-citus"
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.DOTALL | re.MULTILINE)
_SKIP = "<!-- readme-test: skip"
_CITUS = "<!-- readme-test: citus"


@dataclass(frozen=True)
class Block:
    language: str
    text: str
    line: int
    skipped: bool
    needs_citus: bool = False


def readme_blocks() -> list[Block]:
    text = README.read_text()
    blocks = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()].rstrip().splitlines()
        blocks.append(
            Block(
                language=match.group(1),
                text=match.group(2),
                line=text.count("\n", 0, match.start()) + 1,
                skipped=bool(before) and before[-1].startswith(_SKIP),
                needs_citus=bool(before) and before[-1].startswith(_CITUS),
            )
        )
    return blocks


def test_every_code_block_has_a_language_and_runnable_ones_exist() -> None:
    blocks = readme_blocks()
    assert all(b.language for b in blocks), "label every block (sh, python, text, toml...)"
    assert sum(b.language == "sh" and not b.skipped for b in blocks) >= 3
    assert sum(b.language == "python" and b.text.startswith("# ") for b in blocks) >= 2


@pytest.fixture
def readme_dir() -> Iterator[Path]:
    # Not pytest's tmp_path: the servers may run as the postgres user, which must enter it.
    directory = Path(tempfile.mkdtemp(prefix="shardflow-readme-", dir="/tmp"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.timeout(400)
def test_readme_blocks_run_as_written(readme_dir: Path) -> None:
    tmp_path = readme_dir
    work = tmp_path / "work"
    work.mkdir()
    (work / ".venv").symlink_to(REPO / ".venv")
    cluster_dir = tmp_path / "cluster"
    citus_dir = tmp_path / "citus"
    with_citus = citus_installed()
    if not with_citus and os.environ.get("CI") == "true":
        pytest.fail("CI must run the README's Citus section: the Citus extension is missing")
    script = ["set -euo pipefail"]
    for block in readme_blocks():
        if block.skipped or (block.needs_citus and not with_citus):
            continue
        if block.language == "python":
            first = block.text.splitlines()[0]
            if re.fullmatch(r"# [\w.]+\.py", first):
                (work / first[2:]).write_text(block.text)
            else:
                compile(block.text, f"README.md:{block.line}", "exec")
        elif block.language == "sh":
            script.append(f"# README.md line {block.line}")
            text = block.text.replace(DEMO_DIR, str(cluster_dir))
            script.append(text.replace(CITUS_DIR, str(citus_dir)))
    shardflow = str(REPO / ".venv" / "bin" / "shardflow")
    env = {**os.environ, "PYTHONPATH": "", "VIRTUAL_ENV": ""}
    env.pop("SHARDFLOW_CONFIG", None)
    # The cluster `make demo` would have made, fresh, where the README expects it.
    subprocess.run(
        [shardflow, "cluster", "up", "--nodes", "3", "--dir", str(cluster_dir)],
        check=True,
        capture_output=True,
        env=env,
        timeout=180,
    )
    proc = subprocess.Popen(
        ["bash", "-c", "\n".join(script)],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its background workers die with it
    )
    try:
        output, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for directory in (cluster_dir, citus_dir):
            if directory.exists():
                subprocess.run(
                    [shardflow, "cluster", "down", "--destroy", "--dir", str(directory)],
                    capture_output=True,
                    env=env,
                    timeout=120,
                )
    sys.stdout.write(output)
    assert proc.returncode == 0, f"a README block failed:\n{output[-4000:]}"
    # What the tour promises, checked in what it printed.
    assert '"charge": {"charged": 500' in output  # order-1's result
    assert "cancelled" in output
    assert "'charged': 750" in output  # tour.py printed order-3's result
    if with_citus:
        assert '"charge": {"charged": 250' in output  # the Citus section's order
