"""Data page: dataset, imbalance, profile and seed; the long-tailed class counts and sample images."""

import common
import streamlit as st

from ltlib import plots
from ltlib.data import DATASETS, class_groups, make_long_tailed

st.title("Data")
cfg = common.settings()
c1, c2, c3, c4 = st.columns(4)
name = common.choose("dataset", "dataset", DATASETS.available(), c1, help=common.method_help(DATASETS))
common.number_setting("imbalance ratio (largest / smallest)", "imbalance", c2, step=10.0)
common.choose("profile", "profile", common.PROFILES, c3)
common.number_setting("seed", "seed", c4, step=1)
st.caption(DATASETS.get(name).summary + " — " + DATASETS.get(name).paper)

params = {}
if "path" in DATASETS.get(name).defaults and name != "cifar10":
    roots = ", ".join(str(r) for r in common.allowed_data_roots())
    path = st.text_input("image folder (class sub-folders)", key="w_data_path", help=f"allowed data roots: {roots}")
    try:
        params["path"] = str(common.check_data_path(path))
    except ValueError as e:
        st.error(str(e))
        st.stop()
source = (name, tuple(sorted(params.items())))
loaded = st.session_state.setdefault("data_loaded", set())
if name not in common.INSTANT_DATASETS and source not in loaded:
    # Decoding or downloading takes seconds to minutes: only on request, never because a link was opened.
    if not st.button(f"Load {name}", key="data_load", type="primary"):
        st.info(f"Press **Load {name}** to read the dataset and draw its long tail.")
        st.stop()
    loaded.add(source)
try:
    base = common.load_base(*source)
    data = make_long_tailed(base, cfg["imbalance"], cfg["profile"], cfg["seed"])
except (ValueError, FileNotFoundError, OSError) as e:
    st.error(str(e))
    st.stop()
st.session_state["data_params"] = params

counts = data.class_counts()
groups, rule = class_groups(counts)
m = st.columns(4)
m[0].metric("training images", f"{len(data.y_train):,}")
m[1].metric("test images", f"{len(data.y_test):,}")
m[2].metric("classes", data.num_classes)
m[3].metric("largest / smallest", f"{counts.max()} / {counts.min()}")
st.caption(f"many / medium / few groups by {rule}: " + "; ".join(f"{k}: {len(v)} classes" for k, v in groups.items()))
log = st.toggle("log scale", key="w_log_counts")
common.figure(plots.class_counts(counts, data.class_names, log=log), "class_counts")
if data.is_image:
    common.figure(plots.sample_images(data.x_train.numpy(), data.y_train.numpy(), data.class_names), "sample_images")
elif data.input_shape == (2,):
    common.figure(plots.points_2d(data.x_train.numpy(), data.y_train.numpy(), data.class_names), "training_points")
