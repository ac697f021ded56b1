"""Drive the app in a real browser: a `streamlit run` server on a free port and headless Chromium
(Playwright). Shared by ``tests/test_browser.py`` and ``benchmarks/app.py``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
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
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> set[str]:
    """The local addresses with a listening TCP socket on ``port`` (from /proc/net/tcp and tcp6)."""
    out = set()
    for name in ("tcp", "tcp6"):
        path = Path("/proc/net") / name
        for line in path.read_text().splitlines()[1:] if path.exists() else []:
            local, state = line.split()[1], line.split()[3]
            host, p = local.split(":")
            if state == "0A" and int(p, 16) == port:
                raw = bytes.fromhex(host)
                if sys.byteorder == "little":  # the kernel prints each 32-bit word in host order
                    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                out.add(str(ipaddress.ip_address(raw)))
    return out


@contextlib.contextmanager
def serving(cmd: Sequence[str], port: int, cwd: Path, env: dict[str, str]) -> Iterator[str]:
    """Start a Streamlit server by ``cmd`` (listening on ``port``); yield its URL once it answers, stop it afterwards."""
    log = tempfile.TemporaryFile("w+")  # a file, not a pipe: a talkative server never blocks on a full pipe
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"  # IPv4 loopback: served by localhost, 127.0.0.1 and 0.0.0.0 alike
    try:
        for _ in range(240):
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"the streamlit server exited with status {proc.returncode}: {log.read()}")
            try:
                urllib.request.urlopen(f"{url}/_stcore/health", timeout=1)
                break
            except OSError:
                time.sleep(0.25)
        else:
            raise RuntimeError("the streamlit server did not start within 60 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@contextlib.contextmanager
def server(runs: Path, env: dict[str, str] | None = None, args: Sequence[str] = (), cwd: Path = ROOT) -> Iterator[str]:
    """`streamlit run app/Home.py` (more command-line ``args``, from ``cwd``) with its own run store; yields its URL once it answers.

    From the repo root Streamlit reads ``.streamlit/config.toml`` (address localhost); from elsewhere it does not.
    """
    port = free_port()
    full_env = {**os.environ, "LTLIB_HOME": str(runs), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    full_env.setdefault("LTLIB_CACHE", str(ROOT / ".cache"))
    cmd = [sys.executable, "-m", "streamlit", "run", str(ROOT / "app" / "Home.py"), "--server.port", str(port), "--server.headless", "true"]
    with serving([*cmd, *args], port, cwd, full_env) as url:
        yield url


@contextlib.contextmanager
def browser() -> Iterator[Any]:
    """A headless Chromium browser context (fresh temporary profile) that accepts downloads."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = b.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        try:
            yield context
        finally:
            context.close()
            b.close()


def wait_idle(page: Any, timeout_ms: int = 60_000) -> None:
    """Wait until Streamlit has finished its script run and Plotly has drawn every chart on the page."""
    page.wait_for_selector(IDLE, timeout=timeout_ms)
    page.wait_for_function(
        "() => [...document.querySelectorAll('.stPlotlyChart')].every(c => c.querySelector('.js-plotly-plot .main-svg'))",
        timeout=timeout_ms,
    )


def open_page(context: Any, url: str) -> Any:
    page = context.new_page()
    page.goto(url)
    wait_idle(page)
    return page


def go_to(page: Any, title: str) -> None:
    """Switch page through the sidebar (same session, unlike a reload) and wait until it is drawn."""
    page.locator('[data-testid="stSidebarNav"] a', has_text=title).first.click()
    page.wait_for_function(f"() => document.querySelector('h1') && document.querySelector('h1').textContent.startsWith({title!r})")
    wait_idle(page)


def chart_titles(page: Any) -> list[str]:
    return page.locator(".js-plotly-plot .gtitle").all_text_contents()


def wait_chart_title(page: Any, prefix: str, contains: str = "", timeout_ms: int = 90_000) -> None:
    """Wait for a Plotly chart whose title starts with ``prefix`` and contains ``contains``."""
    page.wait_for_function(
        "([p, c]) => [...document.querySelectorAll('.js-plotly-plot .gtitle')].some(t => t.textContent.startsWith(p) && t.textContent.includes(c))",
        arg=[prefix, contains],
        timeout=timeout_ms,
    )
