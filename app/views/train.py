"""Train page: every config field with paper defaults, Start/Stop, live progress and curves."""

from dataclasses import fields

import common
import streamlit as st

from ltlib import plots, presets
from ltlib.config import Config
from ltlib.data import DATASETS
from ltlib.models import MODELS, NORMS
from ltlib.runs import load_run

st.title("Train")
cfg = common.settings()
defaults = Config()

with st.container(border=True):
    c = st.columns(6)
    dataset = common.choose("dataset", "dataset", DATASETS.available(), c[0], help=common.method_help(DATASETS))
    common.number_setting("imbalance", "imbalance", c[1], step=10.0)
    common.choose("profile", "profile", common.PROFILES, c[2])
    model = common.choose("model", "model", common.model_names(), c[3])
    norm = common.choose("norm layer", "norm", common.norm_names(), c[4])
    common.number_setting("seed", "seed", c[5], step=1)

data_params = dict(st.session_state.get("data_params", {})) if dataset == "imagefolder" else {}
caps = common.data_capabilities(dataset)  # declared by the dataset's entry: nothing loads on page open

chosen, params, blocked = {}, {}, []
cols = st.columns(len(common.FAMILIES))
for col, (family, registry) in zip(cols, common.FAMILIES.items()):
    with col:
        name = common.choose(
            family, family, registry.available(), format_func=common.method_label(registry, caps), help=common.method_help(registry)
        )
        entry = registry.get(name)
        st.caption(f"{entry.summary} — *{entry.paper}*")
        missing = common.unmet_needs(registry, name, caps)
        if missing:
            blocked.append(f"{family} {name!r} needs {', '.join(missing)}, which dataset {dataset!r} does not have")
        with st.expander("parameters", expanded=False):
            params[family] = common.method_params(registry, name, family)
        chosen[family] = name

# Every other Config field, typed from its default; the preset fills in quick values.
HANDLED = {"dataset", "dataset_params", "imbalance", "profile", "model", "model_params", "norm", "norm_params", "seed", *common.FAMILIES}
HANDLED |= {f"{f}_params" for f in common.FAMILIES}
CHOICES = {"device": ["auto", "cpu", "cuda"], "engine": ["auto", "eager", "graph"]}
with st.expander("training settings", expanded=False):
    preset_name = st.selectbox("start from preset", presets.available(), key="w_preset", help="fills in the fields below")
    start_values = {**defaults.to_dict(), **presets.PRESETS[preset_name]}
    st.caption(
        f"Config defaults are the LDAM-DRW CIFAR recipe (lr {defaults.lr}, weight decay {defaults.weight_decay}, batch "
        f"{defaults.batch_size}, {defaults.epochs} epochs); the quick presets shorten it for a CPU."
    )
    grid = st.columns(6)
    extra = {}
    names = [f.name for f in fields(Config) if f.name not in HANDLED]
    for i, fname in enumerate(names):
        where, value, wkey = grid[i % 6], start_values[fname], f"w_cfg_{preset_name}_{fname}"
        if fname in CHOICES:
            extra[fname] = where.selectbox(fname, CHOICES[fname], index=CHOICES[fname].index(value), key=wkey)
        elif isinstance(value, bool):
            extra[fname] = where.checkbox(fname, value=value, key=wkey)
        elif isinstance(value, int):
            extra[fname] = int(where.number_input(fname, value=value, step=1, key=wkey))
        elif isinstance(value, float):
            extra[fname] = float(where.number_input(fname, value=value, format="%g", key=wkey))
        else:  # lists and optional numbers: comma-separated text, empty = default
            text = where.text_input(
                fname, value=", ".join(map(str, value)) if isinstance(value, list) else ("" if value is None else str(value)), key=wkey
            )
            try:
                extra[fname] = (
                    [int(v) for v in text.split(",") if v.strip()] if isinstance(value, list) else (float(text) if text.strip() else None)
                )
            except ValueError:
                st.error(f"{fname}={text!r} is not a number list")
                st.stop()
    if model != "auto":
        st.markdown(f"**model {model}** — {MODELS.get(model).summary}")
        model_params = common.method_params(MODELS, model, "model")
    else:
        model_params = {}
    norm_params = common.method_params(NORMS, norm, "norm") if NORMS.get(norm).defaults else {}

job = common.current_job()
b1, b2, _ = st.columns([1, 1, 6])
start = b1.button("Start", type="primary", key="start", disabled=bool(blocked) or (job is not None and job.running))
stop = b2.button("Stop", key="stop", disabled=job is None or not job.running)
for reason in blocked:
    st.error(reason)

if start:
    try:
        config = Config.from_dict(
            dict(
                dataset=dataset,
                dataset_params=data_params,
                imbalance=float(cfg["imbalance"]),
                profile=cfg["profile"],
                seed=int(cfg["seed"]),
                model=model,
                model_params=model_params,
                norm=norm,
                norm_params=norm_params,
                **extra,
                **{f: chosen[f] for f in chosen},
                **{f"{f}_params": params[f] for f in chosen},
            )
        )
        job = common.start_job(config)
        st.rerun()  # redraw the buttons (Stop enabled) and start polling
    except ValueError as e:
        st.error(str(e))
if stop and job is not None:
    job.cancel.set()


@st.fragment(run_every=0.5 if job is not None and job.running else None)
def live() -> None:
    j = common.current_job()
    if j is None:
        st.info("Pick the methods and press **Start**: digits-LT trains in a few seconds on a CPU.")
        return
    common.job_status(j)
    if j.status == "finished" and j.run_id:
        try:
            run = load_run(j.run_id)
        except (ValueError, FileNotFoundError) as e:  # deleted or broken since it was trained
            st.error(f"Cannot show this run: {e}")
            return
        st.success(f"finished in {j.seconds:.1f} s on {run.meta.get('device')} — run {run.id}")
        common.metric_row(run.eval)
        common.figure(plots.training_curves(run.history), "training_curves", key="train_curves")
        common.zip_button(run)
    elif j.history:  # live, redrawn at each poll
        st.plotly_chart(plots.training_curves(j.history), key="live_curves")


live()
