"""The app in a real browser: a `streamlit run` server and headless Chromium (Playwright).

One server and one browser per module. Screenshots go to ``test-artifacts/`` (git-ignored).
"""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
PAGES = ["Data", "Train", "Per-class", "Margins", "Embeddings", "Calibration", "Compare", "Lab", "Lessons"]

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}: browser tests need the Debian chromium package"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tmp: Path) -> tuple[subprocess.Popen, str]:
    """`streamlit run app/Home.py` on a free port with its own run store; waits until it answers."""
    port = free_port()
    env = {**os.environ, "LTLIB_HOME": str(tmp / "runs"), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.setdefault("LTLIB_CACHE", str(ROOT / ".cache"))
    cmd = [sys.executable, "-m", "streamlit", "run", str(ROOT / "app" / "Home.py"), "--server.port", str(port), "--server.headless", "true"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://localhost:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(f"{url}/_stcore/health", timeout=1)
            return proc, url
        except OSError:
            time.sleep(0.25)
    proc.kill()
    raise RuntimeError("streamlit server did not start")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """(server url, browser context); the server is stopped at the end of the module."""
    from playwright.sync_api import sync_playwright

    tmp = tmp_path_factory.mktemp("browser")
    proc, url = start_server(tmp)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        try:
            yield url, context
        finally:
            context.close()
            browser.close()
            proc.terminate()
            proc.wait(timeout=10)


def wait_idle(page) -> None:
    """Wait until Streamlit has finished the current script run."""
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=60_000)
    page.wait_for_timeout(300)


def open_page(context, url: str):
    page = context.new_page()
    page.goto(url)
    wait_idle(page)
    return page


def go_to(page, title: str) -> None:
    """Switch page through the sidebar (same session, unlike a reload)."""
    page.locator('[data-testid="stSidebarNav"] a', has_text=title).first.click()
    page.wait_for_function(f"() => document.querySelector('h1') && document.querySelector('h1').textContent.startsWith({title!r})")
    wait_idle(page)


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def assert_no_exception(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0, page.locator('[data-testid="stException"]').first.inner_text()


def chart_titles(page) -> list[str]:
    return page.locator(".js-plotly-plot .gtitle").all_text_contents()


def test_train_run_then_every_page_renders(app):
    url, context = app
    page = open_page(context, url)
    page.get_by_role("button", name="Start").click()
    page.wait_for_selector('[data-testid="stMetric"]', timeout=90_000)
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=30_000)
    wait_idle(page)
    shot(page, "train-finished")
    assert "balanced accuracy" in page.locator('[data-testid="stMetric"]').first.inner_text()
    for name in PAGES:
        go_to(page, name)
        assert_no_exception(page)
        if name not in ("Lessons", "Compare", "Lab"):
            page.wait_for_selector(".js-plotly-plot .main-svg", timeout=30_000)
        shot(page, f"page-{name}")
    page.close()


def test_download_png_is_a_png(app):
    url, context = app
    page = open_page(context, f"{url}/data")
    with page.expect_download(timeout=60_000) as dl:
        page.get_by_role("button", name="PNG").first.click()
    data = Path(dl.value.path()).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    page.close()


def test_lab_toggle_changes_chart_and_link_reopens_state(app):
    url, context = app
    page = open_page(context, f"{url}/lab")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.js-plotly-plot .gtitle')].some(t => t.textContent.startsWith('after'))", timeout=90_000
    )
    wait_idle(page)
    before = [t for t in chart_titles(page) if t.startswith("after")]
    assert "mixup off" in before[0]
    page.get_by_text("Mixup", exact=True).click()
    page.wait_for_function(
        "() => [...document.querySelectorAll('.js-plotly-plot .gtitle')].some(t => t.textContent.startsWith('after') && t.textContent.includes('mixup on'))",
        timeout=90_000,
    )
    wait_idle(page)
    shot(page, "lab-after-toggle")
    titles = chart_titles(page)
    assert any(t.startswith("before") and "mixup off" in t for t in titles)
    assert "mixing=mixup" in page.url
    shared = page.url
    page.close()

    fresh = context.browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        other = open_page(fresh, shared)
        assert other.locator('[data-testid="stCheckbox"] input').first.is_checked()
        other.goto(shared.replace("/lab?", "/?"))  # Train is the default page, at the root
        wait_idle(other)
        shot(other, "shared-link-train")
        box = other.locator('[data-testid="stSelectbox"]').filter(has_text="mixing")
        assert "mixup" in (box.inner_text() + box.locator("input").first.input_value())
    finally:
        fresh.close()
