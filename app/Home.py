"""Long-Tail Lab explorer (first page): train the digits-LT quick preset and see per-class accuracy."""

import streamlit as st

from ltlib import losses, plots
from ltlib.presets import preset
from ltlib.runs import load_run
from ltlib.train import train

st.set_page_config(page_title="Long-Tail Lab", layout="wide")
st.title("Long-Tail Lab")
st.caption("Long-tailed image classification: pick an imbalance and a loss, train, and watch the tail.")

col1, col2 = st.columns(2)
imbalance = col1.slider("imbalance ratio (largest / smallest class)", 1, 100, 100, key="imbalance")
loss = col2.selectbox(
    "loss", losses.available(), key="loss", help="; ".join(f"{n}: {losses.LOSSES.get(n).summary}" for n in losses.available())
)

if st.button("Train digits-LT", type="primary", key="train"):
    try:
        with st.spinner("training…"):
            result = train(preset("digits-quick", imbalance=float(imbalance), loss=loss))
        st.session_state["run_id"] = result.run_id
    except (ValueError, RuntimeError) as e:
        st.error(str(e))

if "run_id" in st.session_state:
    run = load_run(st.session_state["run_id"])
    e = run.eval
    m = st.columns(4)
    m[0].metric("balanced accuracy", f"{e['balanced_accuracy']:.3f}")
    m[1].metric("many", f"{e['many']:.3f}")
    m[2].metric("few", f"{e['few']:.3f}")
    m[3].metric("ECE", f"{e['ece']:.3f}")
    st.plotly_chart(plots.per_class_accuracy(run), key="per_class")
