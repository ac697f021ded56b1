"""Margins page: logit margins per class, mean margin vs count, classifier weight norms (τ-norm)."""

import common
import streamlit as st

from ltlib import plots

st.title("Margins")
st.caption("Margin = true-class logit − the largest other logit; > 0 means correct. Tail classes usually get smaller margins.")
run = common.pick_run()
if run is not None:
    common.figure(plots.margins(run), "margins")
    left, right = st.columns(2)
    with left:
        common.figure(plots.margin_vs_count(run), "margin_vs_count")
    with right:
        if "head_weight" in run.arrays:
            common.figure(plots.weight_norms(run), "weight_norms")
        else:
            st.info("This run's classifier head has no weight matrix to show.")
