Source of notebooks/04_decoupling.ipynb — edit here, then run `python notebooks/build.py`.

# %% [markdown]
# # 4 · Decoupling representation and classifier
#
# Notebook 6 suggested that a cross-entropy model's features already separate many tail images, and that
# the *classifier* on top is what favours the head. Kang et al. made this a recipe: learn the features
# with ordinary instance-balanced training, then re-balance only the classifier. The cheapest variant
# needs no training at all: normalise the classifier's weight vectors.
#
# **Papers.**
# - Kang, Xie, Rohrbach, Yan, Gordo, Feng & Kalantidis, *Decoupling Representation and Classifier for
#   Long-Tailed Recognition*, ICLR 2020 — classifier re-training (cRT), learnable weight scaling (LWS),
#   τ-normalisation.
# - Alshammari, Wang, Ramanan & Kong, *Long-Tailed Recognition via Weight Balancing*, CVPR 2022 — weight
#   decay and classifier norms (exercise 3).

# %% [markdown]
# ## Parameters

# %%
PRESET = "digits-quick"  # a GPU user: "cifar10-lt"
SEED = 0
TAUS = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0]  # τ-norm exponents to try
FIGURES = "figures"

# %%
from pathlib import Path

import pandas as pd

from ltlib import calibration, metrics, plots
from ltlib.presets import preset
from ltlib.runs import load_run
from ltlib.train import train

FIGURES = Path(FIGURES)


def run_of(**overrides):
    """Train PRESET with ``overrides`` and load the saved run."""
    return load_run(train(preset(PRESET, seed=SEED, **overrides)).run_id)


ce = run_of()
counts, names = ce.eval["class_counts"], ce.meta["class_names"]
out = calibration.Outputs.from_run(ce)

# %% [markdown]
# ## Classifier weight norms follow the class counts
# The logit of class c is z_c = w_c · f + b_c. Classes seen more often receive more gradient pushing w_c
# outward, so their weight vectors grow longer, and a longer w_c wins the argmax more often.

# %%
fig = plots.weight_norms(ce)
FIGURES.mkdir(exist_ok=True)
plots.save(fig, FIGURES / "weight_norms.pdf")
fig

# %% [markdown]
# ## τ-normalisation
# Rescale every weight vector by a power of its norm, drop the bias, and keep the features:
#
# $$\tilde z_c = \frac{w_c \cdot f}{\lVert w_c\rVert^{\tau}} .$$
#
# τ = 0 is the original classifier (without its bias), τ = 1 gives every class a unit-norm weight vector
# — a cosine classifier scaled by ‖f‖. No retraining: `calibration.adjust` recomputes the logits from the
# run's saved test features and weights.

# %%
rows = calibration.sweep_tau_norm(out, TAUS)
plots.sweep(TAUS, rows, "τ (τ-norm exponent)", title="τ-normalised classifier of a cross-entropy model")

# %% [markdown]
# ### Slide τ
# Move the slider under the figure: the tail classes rise as τ grows, until the head starts to fall.

# %%
per_class = {
    f"{tau:g}": metrics.evaluate(calibration.adjust(out, tau_norm=tau), out.labels, out.class_counts)["per_class_accuracy"]
    for tau in TAUS
}
plots.per_class_slider(counts, per_class, names, "Per-class accuracy of the τ-normalised classifier", "τ")

# %% [markdown]
# τ-norm and post-hoc logit adjustment (notebook 3) both correct the decision rule without training; they
# act on different quantities — the weight norms, or the class prior in the logits:

# %%
best = max(rows, key=lambda r: r["balanced_accuracy"])
adjusted = metrics.evaluate(calibration.adjust(out, logit_tau=1.0), out.labels, out.class_counts)
print(f"cross-entropy:                 {ce.eval['balanced_accuracy']:.3f}")
print(f"τ-norm, best τ = {best['tau']:g}:          {best['balanced_accuracy']:.3f} (chosen on the test set: optimistic)")
print(f"post-hoc logit adjustment τ=1: {adjusted['balanced_accuracy']:.3f}")

# %% [markdown]
# ## Re-training the classifier: cRT, LWS and MARC
# Two-stage schedules: stage 1 trains everything with plain cross-entropy; in the last epochs the backbone
# (and its normalisation statistics) is frozen and only a few classifier parameters train, with
# class-balanced sampling and a restarted cosine learning rate:
# - **cRT** re-initialises the linear classifier and re-trains it (the last 10 % of the epochs);
# - **LWS** keeps w and b and learns one scale per class, z_c = f_c·(w_c·f + b_c) (the last 5 %);
# - **MARC** (Wang, Zhang, Hou, Wu, Wang & Shinozaki, *Margin Calibration for Long-Tailed Visual
#   Recognition*, ACML 2022) learns ω_c and β_c with z'_c = ω_c·z_c + β_c·‖w_c‖ (the last 10 %).

# %%
decoupled = {"CE": ce, "cRT": run_of(schedule="crt"), "LWS": run_of(schedule="lws"), "MARC": run_of(schedule="marc")}
summary = {name: {k: r.eval[k] for k in ("balanced_accuracy", "many", "medium", "few")} for name, r in decoupled.items()}
summary[f"τ-norm, τ = {best['tau']:g} (test-chosen)"] = {k: best[k] for k in ("balanced_accuracy", "many", "medium", "few")}
pd.DataFrame(summary).T.round(3)

# %%
plots.compare_per_class(list(decoupled.values()), labels=list(decoupled))

# %% [markdown]
# The classifier that cRT re-trained on class-balanced batches over the same frozen features: its weight
# norms fall far less toward the tail than cross-entropy's (above), though not to flat.

# %%
plots.weight_norms(decoupled["cRT"])

# %% [markdown]
# ## Try it
# Solutions: `solutions/04_decoupling.md`.
#
# **Exercise 1.** Train with the class-balanced sampler (`sampler="class_balanced"`) and plot its weight
# norms. What changed, and what does τ-norm do to that model?
#
# **Exercise 2.** Apply τ-norm to a Balanced Softmax model (`loss="balanced_softmax"`). Its weight norms
# still fall toward the tail — why does τ-norm *hurt* it?
#
# **Exercise 3.** Weight decay pulls every weight vector toward zero. Train with `weight_decay=0` and
# `weight_decay=5e-3` and compare the weight norms and the best τ.
