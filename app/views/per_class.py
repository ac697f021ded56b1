"""Per-class page: accuracy per class (head → tail) with counts, the trend, confusion matrix, group summary."""

import common
import streamlit as st

from ltlib import plots

st.title("Per-class")
run = common.pick_run()
if run is not None:
    common.metric_row(run.eval)
    st.caption(f"many / medium / few groups by {run.eval['group_rule']}")
    common.figure(plots.per_class_accuracy(run), "per_class_accuracy")
    left, right = st.columns(2)
    with left:
        common.figure(plots.accuracy_vs_count(run), "accuracy_vs_count")
    with right:
        common.figure(plots.group_accuracy([run.eval], [run.config["loss"]]), "group_accuracy")
    common.figure(plots.confusion(run), "confusion")
    common.figure(plots.training_curves(run.history), "training_curves")
    common.zip_button(run)
