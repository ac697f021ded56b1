"""Compare page: several runs' per-class accuracy, B − A deltas, all metrics, and what one toggle changed."""

import common
import pandas as pd
import streamlit as st

from ltlib import plots

st.title("Compare")
cfg = common.settings()
runs = common.finished_runs()
if len(runs) < 2:
    st.info("Compare needs at least two finished runs: train some on the **Train** or **Lab** page.")
    st.stop()
by_id = {r.id: r for r in runs}
default = [r for r in cfg["runs"] if r in by_id] or [r.id for r in runs[:2]]
if len(default) < 2:
    default = [*default, *[r.id for r in runs if r.id not in default][: 2 - len(default)]]
picked = st.multiselect(
    "runs (the first is the baseline A)", list(by_id), default=default, format_func=lambda i: common.run_label(by_id[i]), key="w_compare"
)
cfg["runs"] = picked
if len(picked) < 2:
    st.warning("Pick at least two runs.")
    st.stop()
sel = [by_id[i] for i in picked]
labels = [common.run_label(r) for r in sel]

keys = ("balanced_accuracy", "accuracy", "many", "medium", "few", "ece", "classwise_ece", "nll", "mean_margin")
st.dataframe(pd.DataFrame([{"run": lab, **{k: r.eval[k] for k in keys}} for r, lab in zip(sel, labels)]), hide_index=True)
common.figure(plots.compare_per_class(sel, labels), "compare_per_class")
a, b = sel[0], sel[1]
common.figure(plots.delta(a, b, "A", "B"), "delta")

st.subheader("What did this toggle change?")
ignore = {"device", "engine", "compile", "channels_last", "bf16"}
diff = {
    k: (a.config.get(k), b.config.get(k))
    for k in sorted(set(a.config) | set(b.config))
    if k not in ignore and a.config.get(k) != b.config.get(k)
}
if not diff:
    st.write("A and B have the same settings (differences come from nothing but chance).")
elif len(diff) == 1:
    ((k, (va, vb)),) = diff.items()
    d = {g: b.eval[g] - a.eval[g] for g in ("many", "medium", "few", "balanced_accuracy")}
    st.markdown(
        f"A and B differ in one setting: **{k}** `{va}` → `{vb}`. Its effect: head (many) {d['many']:+.3f}, "
        f"medium {d['medium']:+.3f}, tail (few) {d['few']:+.3f}, balanced accuracy {d['balanced_accuracy']:+.3f}."
    )
    common.figure(plots.group_accuracy([a.eval, b.eval], [f"A: {k}={va}", f"B: {k}={vb}"]), "toggle_effect")
else:
    st.write("A and B differ in several settings, so no single toggle explains the change:")
    st.dataframe(pd.DataFrame([{"setting": k, "A": str(va), "B": str(vb)} for k, (va, vb) in diff.items()]), hide_index=True)
