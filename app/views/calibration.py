"""Calibration page: reliability diagram, confidence histogram, ECE / classwise ECE, per-class over/under-confidence."""

import common
import streamlit as st

from ltlib import metrics, plots

st.title("Calibration")
run = common.pick_run()
if run is not None:
    logits, labels = run.arrays["test_logits"], run.arrays["test_labels"]
    probs = metrics.softmax(logits.astype("float64"))
    names = run.meta.get("class_names") or [str(i) for i in range(logits.shape[1])]
    summary = metrics.evaluate(logits, labels, run.eval["class_counts"])
    m = st.columns(4)
    m[0].metric("ECE", f"{summary['ece']:.3f}")
    m[1].metric("classwise ECE", f"{summary['classwise_ece']:.3f}")
    m[2].metric("NLL", f"{summary['nll']:.3f}")
    m[3].metric("balanced accuracy", f"{summary['balanced_accuracy']:.3f}")
    left, right = st.columns(2)
    with left:
        common.figure(plots.reliability(probs, labels), "reliability")
    with right:
        common.figure(plots.confidence_histogram(probs, labels), "confidence_histogram")
    common.figure(plots.confidence_gap(probs, labels, run.eval["class_counts"], names), "confidence_gap")
