"""Hostile links and deployments against the app.

Every page is opened under AppTest through a crafted link: every URL parameter the app reads
(``common.URL_KEYS``) set to empty, garbage, Markdown or HTML injection, huge, negative, nan/inf, unknown,
10k-character or repeated values. A page must not raise, must show link text only escaped (inside a code
span), and must do only cheap work on open: no dataset beyond the instant ones, no training, nothing written
to the cache or the run store. A few links repeat in Chromium, and a real server checks the listening
address that ``./lab.sh app`` asks for, and the app's refusal of a public one.
"""

import os
import re
import shlex
import socket
import sys
from pathlib import Path
from urllib.parse import quote, urlparse

import pytest
from streamlit import config as st_config
from streamlit.testing.v1 import AppTest

from ltlib.cli import APP_FLAGS
from ltlib.data import DATASETS
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "app"))
import common  # noqa: E402
from testing import CHROMIUM, browser, listening, open_page, server  # noqa: E402

os.environ["LTLIB_UMAP_WARM_UP"] = "0"  # no background UMAP compilation in tests
pytestmark = pytest.mark.hostile

HOME = str(ROOT / "app" / "Home.py")
PAGES = ["data", "train", "per_class", "margins", "embeddings", "calibration", "compare", "lab", "lessons"]
EVIL = "evil.example"
MARKDOWN = "[click here](https://evil.example/login) ![x](https://evil.example/pixel.png)"
HTML = '<a href="https://evil.example/a">x</a><img src="https://evil.example/i.png" onerror="alert(1)">'
# Tries to leave a code span (backticks, a blank line) and to reach Streamlit's extra Markdown (LaTeX, colours, icons).
BREAKOUT = "`` ` ``\n\n[y](https://evil.example/b) ![z](https://evil.example/c.png) $x^2$ :red[red] :material/home: **b**"
HOSTILE = {
    "empty": "",
    "markdown": MARKDOWN,
    "html": HTML,
    "breakout": BREAKOUT,
    "huge": "99999999999999999999999",
    "overflow": "1e400",
    "negative": "-1",
    "nan": "nan",
    "inf": "-inf",
    "unknown": "no-such-name%$#@!&;",
    "long": "[a](https://evil.example/l)" * 370,  # ~10k characters
    "repeated": ["ce", MARKDOWN],  # ?k=ce&k=...: the last one counts
    "control": "\x00\u202e[x](https://evil.example/u)\u200b\r\n",  # NUL, a right-to-left override, zero width
}
# Code spans as CommonMark reads them: a run of backticks, then the same run not touching another backtick.
CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`).*?(?<!`)\1(?!`)", re.S)
TEXT_TYPES = {"markdown", "caption", "warning", "error", "info", "success", "title", "header", "subheader"}


@pytest.fixture(autouse=True)
def loopback_address():
    """AppTest reads the address from the working directory's config: pin a loopback one, as ./lab.sh does."""
    old = st_config.get_option("server.address")
    st_config.set_option("server.address", "127.0.0.1")
    yield
    st_config.set_option("server.address", old)


@pytest.fixture
def quiet(tmp_path, monkeypatch):
    """An empty cache and run store, and the names of the datasets the app asks for (however cached)."""
    monkeypatch.setenv("LTLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LTLIB_HOME", str(tmp_path / "runs"))
    loads: list[str] = []
    load_base, build = common.load_base, DATASETS.build

    def spy_load(name, params=()):
        loads.append(name)
        return load_base(name, params)

    def spy_build(name, *args, **params):
        loads.append(name)
        return build(name, *args, **params)

    monkeypatch.setattr(common, "load_base", spy_load)
    monkeypatch.setattr(DATASETS, "build", spy_build)
    return loads


def open_link(page: str, params: dict) -> AppTest:
    at = AppTest.from_file(HOME, default_timeout=30)
    at.query_params.update(params)
    at.switch_page(f"views/{page}.py").run()
    return at


def texts(at: AppTest):
    """(type, Markdown source) of every element; an element of another kind that holds the evil host fails."""
    for node in [*at.main, *at.sidebar]:
        proto = getattr(node, "proto", None)
        if proto is None or not hasattr(node, "value"):
            continue
        if node.type in TEXT_TYPES:
            yield node.type, str(node.value)
        else:
            assert EVIL not in str(proto), f"{node.type} shows link text: {str(proto)[:200]}"


def assert_escaped(at: AppTest) -> None:
    for kind, text in texts(at):
        bare = CODE_SPAN.sub("", text)
        assert EVIL not in bare, f"{kind} renders link text outside a code span: {text[:300]}"
        if kind == "warning":
            assert "\n" not in text and "](" not in bare and "<" not in bare, text[:300]
            assert not any(c in text for c in "\x00\u202e\u200b\r"), "control characters must be shown escaped"


def assert_cheap(at: AppTest, loads: list[str], tmp_path: Path) -> None:
    assert not at.exception, at.exception[0].value
    assert set(loads) <= common.INSTANT_DATASETS, f"page open loaded {loads}"
    assert "job" not in at.session_state, "page open started a training"
    for folder in ("cache", "runs"):
        assert not (tmp_path / folder).exists() or not any((tmp_path / folder).iterdir()), f"page open wrote into {folder}"


def assert_settings_valid(cfg: dict) -> None:
    for key in common.URL_KEYS:
        value = cfg[key]
        if key == "runs":
            assert value == []  # the store is empty: no link id survives
        elif key in common.NUMBERS:
            low, high = common.RANGES[key]
            assert type(value) is common.NUMBERS[key] and low <= value <= high, (key, value)
        elif key == "profile":
            assert value in common.PROFILES
        else:
            assert value in {"dataset": DATASETS, **common.FAMILIES}[key], (key, value)


def warned_keys(at: AppTest) -> set[str]:
    return {m.group(1) for w in at.warning if (m := re.match(r"link setting (\w+)=", w.value))}


@pytest.mark.parametrize("case", ["unknown_keys", *HOSTILE])
@pytest.mark.parametrize("page", PAGES)
def test_crafted_link_on_every_page(page, case, quiet, tmp_path):
    """Every URL parameter at once set to one hostile value: each is refused with an escaped one-line warning."""
    if case == "unknown_keys":  # parameters the app does not read (as good as none): ignored without a word
        params = {"foo": MARKDOWN, "Loss": HTML, "model": MARKDOWN, "optimizer": HTML}
    else:
        params = dict.fromkeys(common.URL_KEYS, HOSTILE[case])
    at = open_link(page, params)
    assert_cheap(at, quiet, tmp_path)
    assert_escaped(at)
    assert_settings_valid(at.session_state["cfg"])
    want = set(common.URL_KEYS) - {"runs"} if case == "empty" else set(params) & set(common.URL_KEYS)
    assert warned_keys(at) == want and len(at.warning) == len(want)
    assert at.title[0].value.replace("-", "_").lower() == page


EDGES = [
    ("imbalance", "1", 1.0),
    ("imbalance", " 1e6 ", 1e6),
    ("seed", "0", 0),
    ("seed", str(2**53 - 1), 2**53 - 1),
    ("profile", "step", "step"),
    *[("dataset", name, name) for name in DATASETS.available()],
]


@pytest.mark.parametrize("key, raw, value", EDGES, ids=[f"{k}={r.strip()}" for k, r, _ in EDGES])
@pytest.mark.parametrize("page", ["data", "train", "lab"])
def test_link_values_at_the_edges_are_taken_and_stay_cheap(page, key, raw, value, quiet, tmp_path):
    """Allowed extremes and every dataset (CIFAR-10, image folders…) reach the pages: nothing loads or trains on open."""
    at = open_link(page, {key: raw})
    assert_cheap(at, quiet, tmp_path)
    assert not at.warning
    if page != "lab":  # the Lab offers its own datasets and imbalance steps
        assert at.session_state["cfg"][key] == value
    if page != "lab" and key in common.NUMBERS:
        widget = at.number_input(key=f"w_{key}")
        assert widget.value == value and (widget.min, widget.max) == common.RANGES[key]


@pytest.fixture(scope="module")
def saved_runs(tmp_path_factory):
    """A run store with two finished digits runs."""
    from ltlib.presets import preset
    from ltlib.train import train

    root = tmp_path_factory.mktemp("saved") / "runs"
    ids = [train(preset("digits-quick", epochs=2, eval_every=2, loss=loss), root=root).run_id for loss in ("ce", "focal")]
    return root, ids


RUN_LINKS = {
    "junk-around-a-run": lambda a, b: f"{b},../../etc/passwd,{MARKDOWN}",
    "repeated": lambda a, b: [a, f"{b},{a}"],
    "long": lambda a, b: ",".join([b] * 300),
}


@pytest.mark.parametrize("case", RUN_LINKS)
@pytest.mark.parametrize("page", ["per_class", "margins", "embeddings", "calibration", "compare"])
def test_run_links_with_saved_runs(page, case, saved_runs, monkeypatch):
    """Unknown run ids are dropped with an escaped warning; the named saved run is the one shown; nothing new is saved."""
    root, (a, b) = saved_runs
    monkeypatch.setenv("LTLIB_HOME", str(root))
    at = open_link(page, {"runs": RUN_LINKS[case](a, b)})
    assert not at.exception, at.exception[0].value
    assert_escaped(at)
    assert at.session_state["cfg"]["runs"][0] == b
    assert len(at.warning) == (case == "junk-around-a-run")
    if page != "compare":
        assert at.selectbox(key="w_run").value == b
    assert sorted(p.name for p in root.iterdir()) == sorted([a, b])


def test_load_url_escapes_and_bounds_every_value():
    """The parser alone: a 10k-character value is shortened, control characters are quoted, a backtick cannot close the span."""
    cfg = dict(common.DEFAULTS, runs=[])
    (warning,) = common.load_url(cfg, {"loss": BREAKOUT * 200})
    assert len(warning) < 600 and "\n" not in warning and EVIL not in CODE_SPAN.sub("", warning)
    assert common.load_url(cfg, {"imbalance": "5_0", "seed": "+7"}) == [] and (cfg["imbalance"], cfg["seed"]) == (50.0, 7)
    assert common.load_url(cfg, {"seed": "1" * 5000})[0].endswith(f"allowed: an integer in [0, {2**53 - 1}]")


def test_shared_numbers_have_one_range_and_a_value_below_it_is_refused(quiet, tmp_path):
    """0.5 typed on Train (one session setting with Data) is refused by the widget, so Data still opens."""
    at = open_link("train", {})
    at.number_input(key="w_imbalance").set_value(0.5).run()
    assert at.session_state["cfg"]["imbalance"] == 100.0
    train_widgets = {k: (at.number_input(key=f"w_{k}").min, at.number_input(key=f"w_{k}").max) for k in common.NUMBERS}
    at.switch_page("views/data.py").run()
    assert not at.exception
    assert {k: (at.number_input(key=f"w_{k}").min, at.number_input(key=f"w_{k}").max) for k in common.NUMBERS} == train_widgets
    assert train_widgets == common.RANGES
    at.switch_page("views/lab.py").run()
    low, high = common.RANGES["imbalance"]
    assert all(low <= float(o) <= high for o in at.select_slider(key="w_imbalance_lab").options)


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").exists(), reason="needs the Debian dataset-fashion-mnist package")
def test_data_page_reads_a_file_dataset_only_after_the_click(quiet, tmp_path):
    at = open_link("data", {"dataset": "fashion-mnist"})
    assert quiet == [] and not at.get("plotly_chart")
    at.button(key="data_load").click().run()
    assert not at.exception and quiet.count("fashion-mnist") >= 1 and at.get("plotly_chart")
    at.number_input(key="w_imbalance").set_value(10.0).run()  # a change redraws without another click
    assert not at.exception and at.get("plotly_chart")


@pytest.mark.parametrize(
    "address, allowed, served",
    [
        (None, None, False),  # unset: every interface
        ("0.0.0.0", None, False),
        ("0.0.0.0", "0.0.0.0", True),
        ("192.0.2.7", "0.0.0.0", False),
        ("192.0.2.7", "192.0.2.7", True),
        ("lab.example", None, False),
        ("127.0.0.1", None, True),
        ("::1", None, True),
        ("localhost", None, True),
    ],
)
def test_app_refuses_a_public_address_unless_asked(address, allowed, served, monkeypatch):
    st_config.set_option("server.address", address)
    if allowed:
        monkeypatch.setenv(common.ADDRESS_ENV, allowed)
    else:
        monkeypatch.delenv(common.ADDRESS_ENV, raising=False)
    at = AppTest.from_file(HOME, default_timeout=30).run()
    assert not at.exception
    if served:
        assert at.title[0].value == "Train" and not at.error
    else:
        assert not at.title and "cfg" not in at.session_state
        assert [e.value for e in at.error] == [common.address_refusal()]
        assert f"Refusing to serve on {address or '0.0.0.0'}" in at.error[0].value


def test_app_hides_error_details_whatever_the_command_line(monkeypatch):
    """The app sets showErrorDetails itself: a crash shows neither the message nor the trace."""
    st_config.set_option("client.showErrorDetails", "full")

    def broken(registry):
        raise RuntimeError("secret /srv/lab/path")

    monkeypatch.setattr(common, "method_help", broken)
    at = AppTest.from_file(HOME, default_timeout=30).run()
    assert st_config.get_option("client.showErrorDetails") == "none"
    assert at.exception and "secret" not in str(at.exception[0].proto) and not at.exception[0].stack_trace


# ----------------------------------------------------------------------------- a real server and Chromium


def lab_sh_app_flags() -> list[str]:
    """The flags ``./lab.sh app`` gives ``streamlit run app/Home.py`` (before the user's own): it runs ``ltlib app``."""
    line = next(x for x in (ROOT / "lab.sh").read_text().splitlines() if x.strip().startswith("app)"))
    words = shlex.split(line.split("exec", 1)[1].split(";;")[0])
    assert words[-3:] == ["$VENV/bin/ltlib", "app", "${@:2}"], line
    return list(APP_FLAGS)


needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}")


@pytest.fixture(scope="module")
def chromium():
    with browser() as context:
        yield context


@pytest.fixture(scope="module")
def lab_sh_server(tmp_path_factory):
    """The app as ``./lab.sh app`` starts it, from another working directory (no .streamlit/config.toml there)."""
    tmp = tmp_path_factory.mktemp("elsewhere")
    env = {"LTLIB_CACHE": str(tmp / "cache"), "LTLIB_UMAP_WARM_UP": "0"}
    with server(tmp / "runs", env=env, args=lab_sh_app_flags(), cwd=tmp) as url:
        yield url, tmp


def test_lab_sh_app_binds_loopback_only(lab_sh_server):
    url, _ = lab_sh_server
    port = urlparse(url).port
    assert {"--server.address", "127.0.0.1", "--client.showErrorDetails", "none"} <= set(lab_sh_app_flags())
    assert listening(port) == {"127.0.0.1"}
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


BROWSER_LINKS = {
    "markdown-warning": ("", {"loss": MARKDOWN, "sampler": HTML}),
    "cifar10-on-data": ("data", {"dataset": "cifar10", "imbalance": "1e400", "seed": "99999999999999999999999", "runs": MARKDOWN * 100}),
    "nan-on-lab": ("lab", {"imbalance": "nan", "mixing": BREAKOUT, "profile": "-1"}),
}


@pytest.mark.browser
@needs_chromium
@pytest.mark.parametrize("case", BROWSER_LINKS)
def test_crafted_link_in_chromium(case, lab_sh_server, chromium):
    """No traceback, no link or image to the injected host in the DOM, no request to it, nothing loaded."""
    url, tmp = lab_sh_server
    path, params = BROWSER_LINKS[case]
    requests: list[str] = []

    def record(request) -> None:
        requests.append(request.url)

    chromium.on("request", record)
    page = open_page(chromium, f"{url}/{path}?" + "&".join(f"{k}={quote(v)}" for k, v in params.items()))
    try:
        body = page.inner_text("body")
        assert "Traceback" not in body and page.locator('[data-testid="stException"]').count() == 0
        assert page.locator(f'a[href*="{EVIL}"], img[src*="{EVIL}"]').count() == 0
        assert not re.search(rf'<(a|img)\b[^>]*(href|src)="https?://{EVIL}', page.content())  # (text has &lt; escaped)
        assert not [r for r in requests if EVIL in (urlparse(r).hostname or "")]
        assert "link setting" in body and page.locator(f'code:has-text("{EVIL}")').count() >= 1  # shown, as code
        if params.get("dataset") == "cifar10":
            assert page.get_by_role("button", name="Load cifar10").count() == 1
        if path == "lab":
            assert page.get_by_role("button", name="Train these controls").count() == 1
        cache = tmp / "cache"
        assert not cache.exists() or not any(cache.iterdir())
    finally:
        chromium.remove_listener("request", record)
        page.close()


@pytest.mark.browser
@needs_chromium
def test_server_from_elsewhere_without_flags_refuses(tmp_path, chromium):
    """Plain `streamlit run /…/app/Home.py` outside the repo listens on every interface: the app refuses to serve."""
    with server(tmp_path / "runs", env={"LTLIB_UMAP_WARM_UP": "0"}, cwd=tmp_path) as url:
        assert listening(urlparse(url).port) & {"0.0.0.0", "::"}  # the wildcard the hostile tester found
        page = open_page(chromium, url)
        try:
            assert "Refusing to serve on 0.0.0.0" in page.inner_text("body")
            assert page.locator("h1").count() == 0 and page.locator('[data-testid="stSidebarNav"]').count() == 0
        finally:
            page.close()
