"""Train page: every config field with paper defaults, Start/Stop, live progress and curves."""

import common
import streamlit as st

from ltlib import plots
from ltlib.data import DATASETS
from ltlib.runs import load_run
from ltlib.train import Config

st.title("Train")
cfg = common.settings()
defaults = Config()

with st.container(border=True):
    c = st.columns(5)
    dataset = common.choose("dataset", "dataset", DATASETS.available(), c[0], help=common.method_help(DATASETS))
    cfg["imbalance"] = c[1].number_input("imbalance", min_value=None, value=float(cfg["imbalance"]), step=10.0, key="w_imbalance")
    cfg["profile"] = c[2].selectbox("profile", ["exp", "step"], index=["exp", "step"].index(cfg["profile"]), key="w_profile")
    model = common.choose("model", "model", common.model_names(), c[3])
    norm = common.choose("norm layer", "norm", common.norm_names(), c[4])

data_params = dict(st.session_state.get("data_params", {})) if dataset == "imagefolder" else {}
try:
    caps = common.data_capabilities(common.load_base(dataset, tuple(sorted(data_params.items()))))
except (ValueError, FileNotFoundError, OSError) as e:
    st.error(f"{e} (set the dataset up on the Data page)")
    caps = set()

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

with st.expander("optimisation (LDAM-DRW recipe defaults)", expanded=False):
    o = st.columns(6)
    epochs = o[0].number_input("epochs", value=30, step=1, key="w_epochs")
    batch_size = o[1].number_input("batch size", value=32, step=1, key="w_batch")
    lr = o[2].number_input("learning rate", value=0.05, format="%g", key="w_lr")
    weight_decay = o[3].number_input("weight decay", value=5e-4, format="%g", key="w_wd")
    warmup = o[4].number_input("warm-up epochs", value=2, step=1, key="w_warmup")
    eval_every = o[5].number_input("evaluate every", value=5, step=1, key="w_eval_every")
    st.caption(
        f"Defaults here are the quick digits preset; the paper recipe (Config) is lr {defaults.lr}, weight decay "
        f"{defaults.weight_decay}, batch {defaults.batch_size}, {defaults.epochs} epochs, {defaults.warmup_epochs} warm-up epochs."
    )
    device = st.selectbox("device", ["auto", "cpu", "cuda"], key="w_device")

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
                norm=norm,
                epochs=int(epochs),
                batch_size=int(batch_size),
                lr=float(lr),
                weight_decay=float(weight_decay),
                warmup_epochs=int(warmup),
                eval_every=int(eval_every),
                device=device,
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
    if j.history:
        st.plotly_chart(plots.training_curves(j.history), key="live_curves")
    if j.status == "finished" and j.run_id:
        run = load_run(j.run_id)
        st.success(f"finished in {j.seconds:.1f} s on {run.meta.get('device')} — run {run.id}")
        common.metric_row(run.eval)


live()
