"""The dashboard in a real browser (issue 12): headless Chromium (Debian's `chromium` and
`chromium-driver` packages, no download) drives `shardflow dashboard` on the live 3-node
cluster with finished, failed, pending and dead-lettered workflows. It opens every page,
follows a failure to its workflow, checks numbers against the database, cancels with actions
enabled (and is refused without them), and saves a screenshot of each page.

Skipped where Chromium is missing; under CI=true (``.ci/run`` installs it) it must run.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from shardflow import App, Client, Worker, WorkflowContext, WorkflowFailed
from shardflow.cluster.admin import cluster_status
from shardflow.config import ClusterConfig
from shardflow.connectors import node_connector
from shardflow.storage import WorkerStore
from shardflow.worker.reaper import DEAD_ERROR
from tests.helpers import REPO, run

pytestmark = pytest.mark.plain_only("one browser run is enough: the pages are the same")

SCREENSHOTS = Path(os.environ.get("SHARDFLOW_SCREENSHOTS", REPO / "bench-results" / "screens"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

browser_app = App("browser-test")


@browser_app.step
def ship(order: str) -> str:
    if order.startswith("broken"):
        raise LookupError(f"no warehouse holds {order}")
    return f"shipped {order}"


@browser_app.workflow
async def fulfil(ctx: WorkflowContext, order: str) -> str:
    return await ship(order)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def browser() -> Iterator[object]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        message = "headless Chromium is not installed: apt-get install chromium chromium-driver"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the browser test: {message}")
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _after_click(browser: object, element_id: str) -> Any:
    """The element of the page a click navigated to, once that page has loaded: a click
    returns before the navigation it starts has finished (the old page may still be there)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, 15).until(
        expected_conditions.presence_of_element_located((By.ID, element_id))
    )


def _serve(config_file: Path, *flags: str) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    argv = [sys.executable, "-m", "shardflow", "--config", str(config_file), "dashboard"]
    server = subprocess.Popen([*argv, "--port", str(port), *flags], cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:  # wait for the server to answer (an event, polled: it is another process)
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1):
                return server, url
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise AssertionError("the dashboard did not start") from None
            time.sleep(0.1)


def _seed(config: ClusterConfig) -> dict[str, str]:
    run_id = uuid.uuid4().hex[:8]
    ids = {
        "ok": f"order-{run_id}",
        "failed": f"broken-{run_id}",
        "pending": f"waiting-{run_id}",
        "dead": f"poisoned-{run_id}",
    }

    async def go() -> None:
        async with Client(config, app=browser_app) as client:
            async with Worker(browser_app, config):
                assert await (await client.start(fulfil, ids["ok"], workflow_id=ids["ok"])).result(
                    30
                )
                failing = await client.start(fulfil, ids["failed"], workflow_id=ids["failed"])
                with pytest.raises(WorkflowFailed):
                    await failing.result(30)
            await client.start(fulfil, ids["dead"], workflow_id=ids["dead"])
            # Dead-lettered as the reaper does it: claimed by a "worker" that never comes
            # back, its lease expired once, with at most one expiry allowed.
            partition, node = client.route(ids["dead"])
            store = WorkerStore(
                node_connector(config, node, config.node(node).dsn, role="test"),
                app_name=browser_app.name,
                workflow_names=["fulfil"],
            )
            async with store.db:
                claimed = await store.claim(
                    partition=partition, limit=1, owner="gone", lease=timedelta(microseconds=1)
                )
                assert [w.workflow_id for w in claimed] == [ids["dead"]]
                _, dead = await store.requeue_expired(max_expiries=1, dead_error=DEAD_ERROR)
                assert ids["dead"] in dead
            await client.start(fulfil, ids["pending"], workflow_id=ids["pending"])

    run(go())
    return ids


@pytest.mark.timeout(180)
def test_the_dashboard_in_a_browser(
    browser: object, config: ClusterConfig, config_file: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver

    assert isinstance(browser, WebDriver)
    ids = _seed(config)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def shot(name: str) -> None:
        browser.save_screenshot(str(SCREENSHOTS / f"{name}.png"))

    server, url = _serve(config_file)
    try:
        browser.get(url + "/")
        shot("cluster")
        status = run(cluster_status(config))
        for node in status.nodes:
            row = browser.find_element(By.CSS_SELECTOR, f'tr[data-node="{node.name}"]')
            failed = row.find_element(By.CSS_SELECTOR, 'td[data-field="failed"]').text
            assert int(failed) == node.workflows.get("failed", 0)
        dead_total = sum(n.workflows.get("dead", 0) for n in status.nodes)
        assert int(browser.find_element(By.ID, "dead-count").text) == dead_total
        cells = browser.find_elements(By.CSS_SELECTOR, "#partition-map span")
        assert len(cells) == config.partition_count

        browser.get(url + "/failures")
        shot("failures")
        example = next(
            link
            for link in browser.find_elements(By.CSS_SELECTOR, "a.example")
            if link.text == ids["failed"]
        )
        example.click()
        assert _after_click(browser, "workflow-id").text == ids["failed"]
        assert "LookupError" in browser.page_source and "Traceback" in browser.page_source
        shot("workflow-failed")

        browser.get(url + "/workflows?status=dead&name=fulfil")
        shot("workflows-dead")
        assert ids["dead"] in browser.page_source
        browser.get(url + f"/workflows/{ids['dead']}")
        assert browser.find_element(By.ID, "status").text.startswith("dead")
        assert not browser.find_elements(By.ID, "requeue")  # read-only: no action links
        browser.get(url + f"/actions/cancel/{ids['pending']}")
        assert "Actions are off" in browser.page_source
    finally:
        server.terminate()
        server.wait(10)

    server, url = _serve(config_file, "--allow-actions")
    try:
        browser.get(url + f"/workflows/{ids['pending']}")
        browser.find_element(By.ID, "cancel").click()
        _after_click(browser, "confirm")
        shot("confirm-cancel")
        browser.find_element(By.ID, "confirm").click()
        assert _after_click(browser, "done").text == "Cancelled."
        assert browser.find_element(By.ID, "status").text == "cancelled"
        shot("workflow-cancelled")
        browser.get(url + "/workflows")
        shot("workflows")
    finally:
        server.terminate()
        server.wait(10)
