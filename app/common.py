"""Shared helpers of the Long-Tail Lab app: settings kept in session state and the URL, background
training (one thread per browser session), run pickers and the figure-with-downloads widget.

Streamlit is only called from the script thread; the training thread talks to the page through a
plain :class:`Job` object that the page polls.
"""

from __future__ import annotations

import ipaddress
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import streamlit as st

from ltlib import plots
from ltlib.config import FIELD_RULES, Config
from ltlib.data import DATASETS, cache_dir, data_dir, data_roots
from ltlib.families import METHOD_FAMILIES, unmet_data_needs
from ltlib.models import MODELS, NORMS
from ltlib.registry import Interval, Param, Registry
from ltlib.runs import CorruptRun, Run, list_runs, load_run
from ltlib.train import Cancelled, Event, TrainingDiverged, train

# Method families shown as toggles: the library's catalogue, so new methods appear by themselves.
FAMILIES: dict[str, Registry] = {f.name: f.registry for f in METHOD_FAMILIES}
# The settings a page shares (and a link carries), with the defaults of ``Config``.
_CONFIG = Config()
DEFAULTS: dict[str, Any] = {
    **{k: getattr(_CONFIG, k) for k in ("dataset", "imbalance", "profile", "seed", "model", "norm")},
    **{name: getattr(_CONFIG, name) for name in FAMILIES},
    "runs": [],
}
NUMBERS = {"imbalance": float, "seed": int}
# One allowed range per shared number, for the link parser and every page's widget alike: the config's own
# rule, capped where a number widget ends. Browsers hold integers exactly only up to 2**53 - 1 (Streamlit
# refuses a larger seed), and a widget needs a finite bound: no dataset here has a class of a million images.
_WIDGET_MAX = {"imbalance": 1e6, "seed": 2**53 - 1}
RANGES = {k: (NUMBERS[k](FIELD_RULES[k][0].low), NUMBERS[k](min(FIELD_RULES[k][0].high or cap, cap))) for k, cap in _WIDGET_MAX.items()}
PROFILES = ["exp", "step"]
# Datasets generated or shipped with scikit-learn load in milliseconds, so the Data page draws them on open;
# every other one (files to decode, maybe a download) waits for a click.
INSTANT_DATASETS = frozenset({"toy2d", "digits", "digits-domains"})
# The app serves a loopback address only, unless this variable names the other address.
ADDRESS_ENV = "LTLIB_APP_ADDRESS"
# Session flag set by a Lab control's change or a lesson step: the Lab trains on its next run (never on a mere visit).
LAB_TRAIN = "lab_train_requested"
# A teacher's link: these settings travel in the URL (the page is the URL path).
URL_KEYS = ("dataset", "imbalance", "profile", "seed", "loss", "sampler", "mixing", "schedule", "runs")
# A training thread whose page has not polled for this long belongs to a closed tab: it stops.
ORPHAN_SECONDS = 60.0


# ----------------------------------------------------------------------------- settings and URL


def settings() -> dict[str, Any]:
    """The session's settings (shared by all pages), read once from the URL when the session starts."""
    ss = st.session_state
    if "cfg" not in ss:
        ss["cfg"] = dict(DEFAULTS, runs=[])
        warnings = load_url(ss["cfg"], st.query_params.to_dict())
        for w in warnings:
            st.warning(w)
    return ss["cfg"]


def load_url(cfg: dict[str, Any], params: dict[str, str]) -> list[str]:
    """Apply URL parameters to ``cfg``; returns a one-line warning (Markdown, the link's text escaped) for each value ignored."""
    problems = []
    for key in URL_KEYS:
        if key not in params:
            continue
        raw = params[key]
        if key == "runs":  # a link names saved runs: the others are dropped, the rest kept
            known = {r.id for r in list_runs()}
            ids = [r for r in raw.split(",") if r]
            cfg["runs"] = [r for r in ids if r in known]
            if len(cfg["runs"]) < len(ids):
                dropped = len(ids) - len(cfg["runs"])
                problems.append(
                    f"link setting runs={shown(raw)}: {dropped} unknown run id(s) dropped; allowed: ids of saved runs, comma-separated"
                )
            continue
        try:
            cfg[key] = link_value(key, raw)
        except ValueError as e:
            problems.append(f"link setting {key}={shown(raw)} ignored; allowed: {e}")
    return problems


def link_value(key: str, raw: str) -> Any:
    """Setting ``key`` parsed from a link's text; ``ValueError`` saying what is allowed (never repeating the text)."""
    if key in NUMBERS:
        cast, (low, high) = NUMBERS[key], RANGES[key]
        allowed = f"an integer in [{low}, {high}]" if cast is int else f"a number in [{low:g}, {high:.15g}]"
        try:
            value = cast(raw)
        except ValueError:  # also int() of more than 4,300 digits
            raise ValueError(allowed) from None
        if not low <= value <= high:  # false for nan too
            raise ValueError(allowed)
        return value
    options = PROFILES if key == "profile" else {"dataset": DATASETS, **FAMILIES}[key].available()
    if raw not in options:
        raise ValueError(", ".join(options))
    return raw


def shown(text: str, limit: int = 60) -> str:
    """Untrusted text for a Markdown message: quoted (control characters escaped), shortened, in a code span
    fenced by more backticks than it holds, so no link, image, HTML or emphasis in it is rendered."""
    quoted = repr(text if len(text) <= limit else text[:limit] + "...")
    fence = "`" * (max(map(len, re.findall("`+", quoted)), default=0) + 1)
    return f"{fence} {quoted} {fence}"


def url_params(cfg: dict[str, Any]) -> dict[str, str]:
    """The URL parameters that reproduce ``cfg`` (defaults are left out to keep links short)."""
    out = {}
    for key in URL_KEYS:
        value = cfg.get(key)
        if key == "runs":
            if value:
                out[key] = ",".join(value)
        elif value != DEFAULTS[key]:
            out[key] = f"{value:.15g}" if isinstance(value, float) else str(value)  # exact enough to reproduce the setting
    return out


def sync_url() -> None:
    """Write the settings into the URL so the address bar is always a shareable link."""
    want = url_params(settings())
    if st.query_params.to_dict() != want:
        st.query_params.from_dict(want)


def set_settings(**values: Any) -> None:
    """Change settings from code (lessons, lab): also forget the widgets' own state so they follow."""
    settings().update(values)
    for key in [k for k in st.session_state if isinstance(k, str) and k.startswith("w_")]:
        if any(key == f"w_{v}" or key.startswith(f"w_{v}_") for v in values):
            del st.session_state[key]


def choose(label: str, key: str, options: list[str], where: Any = st, widget: str | None = None, **kw: Any) -> str:
    """A selectbox bound to setting ``key`` (kept across pages and in the URL); ``widget`` overrides its widget key."""
    cfg = settings()
    if cfg[key] not in options:
        cfg[key] = options[0]
    cfg[key] = where.selectbox(label, options, index=options.index(cfg[key]), key=widget or f"w_{key}", **kw)
    return cfg[key]


def number_setting(label: str, key: str, where: Any = st, **kw: Any) -> Any:
    """A number input bound to shared setting ``key``, bounded by ``RANGES`` on every page (as the link is)."""
    cfg, cast = settings(), NUMBERS[key]
    low, high = RANGES[key]
    value = min(max(cast(cfg[key]), low), high)
    cfg[key] = cast(where.number_input(label, min_value=low, max_value=high, value=value, key=f"w_{key}", **kw))
    return cfg[key]


def address_refusal() -> str | None:
    """Why the app refuses to serve from the server's address (one line), or None for a loopback address
    or the one ``$LTLIB_APP_ADDRESS`` names. An unset ``server.address`` means every interface, as 0.0.0.0."""
    address = st.get_option("server.address") or "0.0.0.0"
    try:
        loopback = address == "localhost" or ipaddress.ip_address(address).is_loopback
    except ValueError:  # a host name
        loopback = False
    if loopback or address == os.environ.get(ADDRESS_ENV):
        return None
    return (
        f"Refusing to serve on {address}: anyone on the network could use this app. Start it with `ltlib app` "
        f"(this machine only), or set {ADDRESS_ENV}={address} to allow that address."
    )


# ----------------------------------------------------------------------------- methods and data


@st.cache_resource(max_entries=4, show_spinner="loading the dataset…")
def load_base(name: str, params: tuple[tuple[str, Any], ...] = ()) -> Any:
    """A registered dataset, loaded once per process (datasets are read-only)."""
    from ltlib.data import load_dataset

    return load_dataset(name, **dict(params))


def data_capabilities(dataset: str) -> frozenset[str]:
    """What a registered dataset offers to methods that need images or domains (its declared traits)."""
    return DATASETS.get(dataset).traits


def unmet_needs(registry: Registry, name: str, caps: frozenset[str] | set[str]) -> list[str]:
    return unmet_data_needs(registry.get(name), caps)


def method_label(registry: Registry, caps: set[str]) -> Any:
    """``format_func`` for a method selectbox: the name, marked when the dataset lacks what it needs."""

    def fmt(name: str) -> str:
        missing = unmet_needs(registry, name, caps)
        return f"{name} (unavailable: needs {', '.join(missing)})" if missing else name

    return fmt


def method_help(registry: Registry) -> str:
    return "\n\n".join(f"**{n}** — {registry.get(n).summary}" for n in registry.available())


def method_params(registry: Registry, name: str, key: str, where: Any = st) -> dict[str, Any]:
    """Inputs for a method's parameters, typed and bounded by its registry entry; returns those changed from the default."""
    out: dict[str, Any] = {}
    for param in registry.get(name).params.values():
        value = param_input(param, f"p_{key}_{name}_{param.name}", where)
        if value != param.default:
            out[param.name] = value
    return out


def param_input(param: Param, wkey: str, where: Any = st) -> Any:
    """One widget for ``param``: a checkbox, a choice, a bounded number or a text box (lists, optional values)."""
    default, tip = param.default, f"allowed: {param.allowed()}"
    bounds = [c for c in param.constraints if isinstance(c, Interval)]
    low = bounds[0].low if bounds and bounds[0].closed in ("both", "left") else None
    high = bounds[0].high if bounds and bounds[0].closed in ("both", "right") else None
    if param.options is not None:
        return where.selectbox(param.name, list(param.options), index=list(param.options).index(default), key=wkey, help=tip)
    if param.kind is bool and default is not None:
        return where.checkbox(param.name, value=default, key=wkey, help=tip)
    if param.kind is int and default is not None:
        lo, hi = (None if v is None else int(v) for v in (low, high))
        return int(where.number_input(param.name, value=default, min_value=lo, max_value=hi, step=1, key=wkey, help=tip))
    if param.kind is float and default is not None:
        lo, hi = (None if v is None else float(v) for v in (low, high))
        return float(where.number_input(param.name, value=float(default), min_value=lo, max_value=hi, format="%g", key=wkey, help=tip))
    shown = "" if default is None else ", ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
    text = where.text_input(param.name, value=shown, key=wkey, help=f"{tip}; empty = default")
    if text == shown:
        return default
    return [_parse(v.strip()) for v in text.split(",") if v.strip()] if param.kind is list else _parse(text)


def _parse(text: str) -> Any:
    """A typed value from a text box: int, float, bool or the string itself."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


# The app confines image-folder paths to these roots unless $LTLIB_DATA_ROOTS names others; setting
# the variable makes ltlib.data check every file it reads (symlinks resolved), not only the top path.
DEFAULT_DATA_ROOTS = (data_dir(), cache_dir(), Path("/usr/share/datasets"))
os.environ.setdefault("LTLIB_DATA_ROOTS", os.pathsep.join(map(str, DEFAULT_DATA_ROOTS)))


def allowed_data_roots() -> list[Path]:
    """Folders an image-folder path may point into: ``$LTLIB_DATA_ROOTS``, else the data folder, the cache and /usr/share/datasets."""
    return data_roots() or [r.expanduser().resolve() for r in DEFAULT_DATA_ROOTS]


def check_data_path(path: str) -> Path:
    """Resolve a user-given data path; ``ValueError`` when it is outside the allowed roots or missing."""
    if not path.strip():
        raise ValueError("image folder path is empty; give a folder of class sub-folders")
    p = Path(path).expanduser().resolve()
    roots = allowed_data_roots()
    if not any(p == r or r in p.parents for r in roots):
        allowed = ", ".join(str(r) for r in roots)
        raise ValueError(f"path {p} is outside the allowed data roots ({allowed}); set LTLIB_DATA_ROOTS to allow another folder")
    if not p.exists():
        raise ValueError(f"path does not exist: {p}")
    return p


# ----------------------------------------------------------------------------- background training


@dataclass
class Job:
    """One training run in a background thread; the thread writes, the page reads."""

    cfg: Config
    tag: str = "train"
    cancel: threading.Event = field(default_factory=threading.Event)
    status: str = "starting"  # running, finished, failed (diverged), error (bad setting), cancelled
    epoch: int = 0
    epochs: int = 1
    step: int = 0
    steps: int = 1
    history: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    run_id: str | None = None
    started: float = field(default_factory=time.time)
    seconds: float = 0.0
    last_seen: float = field(default_factory=time.time)
    on_done: Any = None  # called in the thread with the job once it ends (plain Python only)
    thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self.status in ("starting", "running")

    @property
    def progress(self) -> float:
        return min(1.0, (self.epoch + self.step / max(self.steps, 1)) / max(self.epochs, 1))

    def on_event(self, ev: Event) -> None:
        if time.time() - self.last_seen > ORPHAN_SECONDS:
            self.cancel.set()  # nobody is looking: the tab was closed
        self.epoch, self.epochs, self.step, self.steps = ev.epoch, ev.epochs, ev.step + 1, max(ev.steps, 1)
        if ev.kind == "start":
            self.status, self.info, self.step = "running", dict(ev.data), 0
        elif ev.kind == "epoch":
            self.history = [*self.history, dict(ev.data)]
            self.epoch, self.step = ev.epoch + 1, 0
        elif ev.kind == "end":
            self.run_id = ev.data["run_id"]

    def run(self) -> None:
        try:
            result = train(self.cfg, callbacks=[self.on_event], cancel=self.cancel)
            self.run_id, self.status = result.run_id, "finished"
        except Cancelled:
            self.status = "cancelled"
        except TrainingDiverged as e:
            self.status, self.error = "failed", str(e)
        except (ValueError, FileNotFoundError, RuntimeError, OSError) as e:
            self.status, self.error = "error", str(e)
        except Exception as e:  # noqa: BLE001 — any failure must reach the page, not kill the thread silently
            self.status, self.error = "error", f"{type(e).__name__}: {e}"
        finally:
            self.seconds = time.time() - self.started
            if self.on_done is not None:
                self.on_done(self)


def start_job(cfg: Config, tag: str = "train", on_done: Any = None) -> Job:
    """Validate ``cfg`` (``ValueError`` on a bad setting), stop the session's running job, start a new one."""
    cfg.validate()
    old = st.session_state.get("job")
    if old is not None and old.running:
        old.cancel.set()
    job = Job(cfg, tag=tag, on_done=on_done)
    job.thread = threading.Thread(target=job.run, name=f"ltlib-{tag}", daemon=True)
    st.session_state["job"] = job
    job.thread.start()
    return job


def current_job() -> Job | None:
    job = st.session_state.get("job")
    if job is not None:
        job.last_seen = time.time()
    return job


def job_status(job: Job, where: Any = st) -> None:
    """Progress bar while running; the error of a failed run; nothing else."""
    if job.running:
        where.progress(job.progress, text=f"{job.tag}: epoch {min(job.epoch + 1, job.epochs)}/{job.epochs}")
    elif job.status in ("failed", "error"):
        where.error(f"training {'diverged' if job.status == 'failed' else 'failed'}: {job.error}")
    elif job.status == "cancelled":
        where.info("training was stopped; nothing was saved")


def sidebar_monitor() -> None:
    """Keeps the session's job polled from every page; reruns the app once when it ends."""
    job = current_job()
    running = job is not None and job.running

    @st.fragment(run_every=0.5 if running else None)
    def monitor() -> None:
        j = current_job()
        if j is None:
            return
        if j.running:
            job_status(j)
        elif st.session_state.get("_job_seen_end") is not j:
            st.session_state["_job_seen_end"] = j
            if j.status == "finished" and j.run_id:
                set_settings(runs=[j.run_id])
                st.session_state.pop("w_run", None)  # run pickers follow the new run
            st.rerun(scope="app")
        elif j.status == "finished":
            st.caption(f"last run: {j.run_id} ({j.seconds:.1f} s)")
        else:
            job_status(j)

    with st.sidebar:
        monitor()


# ----------------------------------------------------------------------------- runs and figures


@st.cache_resource(max_entries=64, show_spinner=False)
def _load(path: str, mtime: float) -> Run:
    return load_run(path)


def finished_runs() -> list[Run]:
    """The saved, finished runs (newest first); loaded once each (runs never change)."""
    return [_load(str(r.path), r.path.stat().st_mtime) for r in list_runs() if r.status == "finished" and r.eval]


def run_label(run: Run) -> str:
    c = run.config
    extra = [f"{k}={c[k]}" for k in ("sampler", "mixing", "schedule") if c.get(k) not in (None, "none", "instance")]
    return f"{c['dataset']} ×{c['imbalance']:g} · {c['loss']}{' · ' + ' · '.join(extra) if extra else ''} · {run.id[9:15]}"


def pick_run(label: str = "run", where: Any = st) -> Run | None:
    """A run selector bound to the first of the selected runs; None (with a hint) when there are none."""
    runs = finished_runs()
    if not runs:
        where.info("No finished runs yet: start one on the **Train** or **Lab** page.")
        return None
    cfg = settings()
    ids = [r.id for r in runs]
    current = next((r for r in cfg["runs"] if r in ids), ids[0])
    by_id = {r.id: r for r in runs}
    chosen = where.selectbox(label, ids, index=ids.index(current), format_func=lambda i: run_label(by_id[i]), key="w_run")
    if not cfg["runs"] or cfg["runs"][0] != chosen:
        cfg["runs"] = [chosen, *[r for r in cfg["runs"] if r != chosen]]
    try:
        _ = by_id[chosen].arrays  # every page of one run draws from its arrays: a broken file is one line, not a traceback
    except CorruptRun as e:
        where.error(f"This run cannot be shown: {e}")
        return None
    return by_id[chosen]


def figure(fig: go.Figure, name: str, key: str | None = None) -> None:
    """A Plotly figure with PNG / SVG / PDF / CSV downloads (made only when clicked)."""
    st.plotly_chart(fig, key=key or f"fig_{name}", config={"displaylogo": False})
    mimes = {"png": "image/png", "svg": "image/svg+xml", "pdf": "application/pdf", "csv": "text/csv"}
    with st.container(horizontal=True, gap="small"):
        for fmt, mime in mimes.items():
            st.download_button(
                fmt.upper(),
                data=(lambda: plots.figure_table(fig).to_csv(index=False)) if fmt == "csv" else (lambda fmt=fmt: plots.to_bytes(fig, fmt)),
                file_name=f"{name}.{fmt}",
                mime=mime,
                key=f"dl_{key or name}_{fmt}",
                on_click="ignore",
                icon=":material/download:",
            )


def zip_button(run: Run) -> None:
    """Download every figure of a run (PNG, SVG, PDF and CSV) as one zip."""
    st.download_button(
        "All figures of this run (zip)",
        data=lambda: plots.figures_zip(plots.run_figures(run)),
        file_name=f"{run.id}-figures.zip",
        mime="application/zip",
        key=f"zip_{run.id}",
        on_click="ignore",
    )


def metric_row(e: dict[str, Any], where: Any = st) -> None:
    cols = where.columns(6)
    for col, (k, label) in zip(
        cols,
        [
            ("balanced_accuracy", "balanced accuracy"),
            ("accuracy", "accuracy"),
            ("many", "many"),
            ("medium", "medium"),
            ("few", "few"),
            ("ece", "ECE"),
        ],
    ):
        col.metric(label, f"{e[k]:.3f}")


def model_names() -> list[str]:
    return ["auto", *MODELS.available()]


def norm_names() -> list[str]:
    return NORMS.available()
