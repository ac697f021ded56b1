"""The app in a real browser: a `streamlit run` server and headless Chromium (Playwright).

One server and one browser per module. Screenshots go to ``test-artifacts/`` (git-ignored).
"""

import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "app"))
from testing import CHROMIUM, browser, chart_titles, go_to, open_page, server, wait_chart_title, wait_idle  # noqa: E402

ARTIFACTS = ROOT / "test-artifacts"
PAGES = ["Data", "Train", "Per-class", "Margins", "Embeddings", "Calibration", "Compare", "Lab", "Lessons"]

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}: browser tests need the Debian chromium package"
)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """(server url, browser context): one server and one browser for the module."""
    ARTIFACTS.mkdir(exist_ok=True)
    with server(tmp_path_factory.mktemp("browser") / "runs", env={"LTLIB_UMAP_WARM_UP": "0"}) as url, browser() as context:
        yield url, context


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def assert_no_exception(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0, page.locator('[data-testid="stException"]').first.inner_text()


def test_train_run_then_every_page_renders(app):
    url, context = app
    page = open_page(context, url)
    page.get_by_role("button", name="Start").click()
    page.wait_for_selector('[data-testid="stMetric"]', timeout=90_000)
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=30_000)
    wait_idle(page)
    shot(page, "train-finished")
    assert "balanced accuracy" in page.locator('[data-testid="stMetric"]').first.inner_text()
    with page.expect_download(timeout=180_000) as dl:
        page.get_by_role("button", name="All figures of this run (zip)").click()
    names = zipfile.ZipFile(dl.value.path()).namelist()
    assert {"per_class_accuracy.png", "per_class_accuracy.svg", "per_class_accuracy.pdf", "per_class_accuracy.csv", "confusion.png"} <= set(
        names
    )
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
    page.get_by_role("button", name="Train these controls").click()  # opening the Lab trains nothing
    page.wait_for_function(
        "() => [...document.querySelectorAll('.js-plotly-plot .gtitle')].some(t => t.textContent.startsWith('after'))", timeout=90_000
    )
    wait_idle(page)
    before = [t for t in chart_titles(page) if t.startswith("after")]
    assert "mixup off" in before[0]
    page.get_by_text("Mixup", exact=True).click()
    wait_chart_title(page, "after", "mixup on")
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
