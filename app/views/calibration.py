"""Calibration page: reliability, confidence histogram, ECE / classwise ECE, per-class over/under-confidence,
and post-hoc sliders (temperature, τ-norm τ, logit-adjustment τ) recomputed from the saved run, no retraining."""

from dataclasses import replace

import common
import streamlit as st

from ltlib import calibration, metrics, plots

st.title("Calibration")
run = common.pick_run()
if run is not None:
    out = calibration.Outputs.from_run(run)
    names = run.meta.get("class_names") or [str(i) for i in range(out.logits.shape[1])]
    can_tau_norm = out.features is not None and out.weight is not None

    with st.container(border=True):
        st.markdown("**Post-hoc adjustment** (recomputed from the saved logits, features and weights)")
        s = st.columns([2, 1, 2, 2])
        temperature = s[0].slider("temperature T (z / T)", 0.1, 5.0, 1.0, 0.05, key="w_cal_temperature")
        if out.val_logits is not None and s[1].button("fit T on validation", key="fit_t"):
            st.session_state["w_cal_temperature"] = min(
                5.0, max(0.1, round(calibration.fit_temperature(out.val_logits, out.val_labels), 2))
            )
            st.rerun()
        tau_norm = s[2].slider(
            "τ-norm τ (w_c / ‖w_c‖^τ)",
            0.0,
            2.0,
            0.0,
            0.05,
            key="w_cal_tau_norm",
            disabled=not can_tau_norm,
            help=None if can_tau_norm else "needs the run's test features and a linear head",
        )
        logit_tau = s[3].slider("logit adjustment τ (z − τ·log π)", 0.0, 3.0, 0.0, 0.05, key="w_cal_logit_tau")

    try:
        logits = calibration.adjust(out, temperature, tau_norm if can_tau_norm and tau_norm > 0 else None, logit_tau)
    except ValueError as e:
        st.error(str(e))
        st.stop()
    base = metrics.evaluate(out.logits, out.labels, out.class_counts)
    now = metrics.evaluate(logits, out.labels, out.class_counts)
    cols = st.columns(6)
    for col, (k, label) in zip(
        cols,
        [
            ("balanced_accuracy", "balanced accuracy"),
            ("few", "few"),
            ("many", "many"),
            ("ece", "ECE"),
            ("classwise_ece", "classwise ECE"),
            ("nll", "NLL"),
        ],
    ):
        change = now[k] - base[k]
        col.metric(
            label,
            f"{now[k]:.3f}",
            delta=f"{change:+.3f}" if abs(change) >= 5e-4 else None,
            delta_color="inverse" if k in ("ece", "classwise_ece", "nll") else "normal",
        )

    probs = metrics.softmax(logits.astype("float64"))
    left, right = st.columns(2)
    with left:
        common.figure(plots.reliability(probs, out.labels), "reliability")
    with right:
        common.figure(plots.confidence_histogram(probs, out.labels), "confidence_histogram")
    common.figure(plots.confidence_gap(probs, out.labels, out.class_counts, names), "confidence_gap")
    adjusted = replace(run, eval=now)
    common.figure(
        plots.per_class_accuracy(adjusted, f"Per-class accuracy after adjustment — balanced {now['balanced_accuracy']:.3f}"),
        "adjusted_per_class",
    )
