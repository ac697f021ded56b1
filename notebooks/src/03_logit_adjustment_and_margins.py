Source of notebooks/03_logit_adjustment_and_margins.ipynb — edit here, then run `python notebooks/build.py`.

# %% [markdown]
# # 3 · Logit adjustment and margins
#
# Notebook 1 showed a cross-entropy classifier that over-predicts head classes. Here we fix the
# *decision rule* rather than the data: subtract the training prior from the logits after training,
# or build it into the loss, or demand larger margins for rare classes.
#
# **Papers.**
# - Menon, Jayasumana, Rawat, Jain, Veit & Kumar, *Long-tail learning via logit adjustment*, ICLR 2021
#   — post-hoc and loss-based logit adjustment.
# - Ren, Yu, Ma, Zhao, Yi & Li, *Balanced Meta-Softmax for Long-Tailed Visual Recognition*, NeurIPS 2020
#   — Balanced Softmax.
# - Cao, Wei, Gaidon, Arechiga & Ma, *Learning Imbalanced Datasets with Label-Distribution-Aware Margin
#   Loss*, NeurIPS 2019 — LDAM and deferred re-weighting (DRW).

# %% [markdown]
# ## Why subtracting log π is the right thing to do
# Let π_y be the training class prior and assume the class-conditional p(x | y) is the same in training
# and test; only the label distribution shifts. Bayes' rule gives the training posterior
#
# $$p_{\text{train}}(y\mid x) = \frac{p(x\mid y)\,\pi_y}{p_{\text{train}}(x)} .$$
#
# The balanced test set has prior 1/C, so $p_{\text{bal}}(y\mid x) \propto p(x\mid y) \propto p_{\text{train}}(y\mid x)/\pi_y$.
# The classifier that minimises the *balanced* error predicts
#
# $$\hat y(x) = \arg\max_y\; p_{\text{bal}}(y\mid x) = \arg\max_y\; \bigl[\log p_{\text{train}}(y\mid x) - \log \pi_y\bigr].$$
#
# If softmax(z) estimates the training posterior, then $\arg\max_y (z_y - \log\pi_y)$ is Bayes-optimal for
# balanced accuracy: **post-hoc logit adjustment** with τ = 1 (τ ≠ 1 tempers the correction).
# Turned around: train on $\text{softmax}(z + \log\pi)$ so that the plain logits z estimate the balanced
# posterior. That is **Balanced Softmax**, and the **logit-adjusted loss** of Menon et al. with τ = 1
# (their τ scales log π).

# %% [markdown]
# ## Parameters

# %%
PRESET = "digits-quick"  # a GPU user: "cifar10-lt"
SEED = 0
TAUS = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]  # post-hoc adjustment strengths to try
FIGURES = "figures"

# %%
from pathlib import Path

import pandas as pd

from ltlib import calibration, losses, metrics, plots
from ltlib.presets import preset
from ltlib.runs import load_run
from ltlib.train import train

FIGURES = Path(FIGURES)
SUMMARY = ["balanced_accuracy", "many", "medium", "few", "ece", "mean_margin"]


def run_of(**overrides):
    """Train PRESET with ``overrides`` and load the saved run."""
    return load_run(train(preset(PRESET, seed=SEED, **overrides)).run_id)


ce = run_of(loss="ce")
counts, names = ce.eval["class_counts"], ce.meta["class_names"]
print(f"cross-entropy: balanced accuracy {ce.eval['balanced_accuracy']:.3f}")

# %% [markdown]
# ## Post-hoc logit adjustment
# No retraining: `calibration.adjust` recomputes the saved test logits as z − τ·log π.

# %%
out = calibration.Outputs.from_run(ce)
posthoc = [metrics.evaluate(calibration.adjust(out, logit_tau=tau), out.labels, out.class_counts) for tau in TAUS]
fig = plots.sweep(TAUS, posthoc, "τ (post-hoc z − τ·log π)", title="Post-hoc logit adjustment of a cross-entropy model")
FIGURES.mkdir(exist_ok=True)
plots.save(fig, FIGURES / "posthoc_tau.pdf")
fig

# %% [markdown]
# Head accuracy gives a little, the tail gains a lot; balanced accuracy peaks near the Bayes value τ = 1.
# Too large a τ over-corrects and the head collapses. The same adjustment as a training option:
# `preset(..., posthoc_tau=1.0)` evaluates the run with adjusted logits.

# %% [markdown]
# ## Building the prior into the loss: Balanced Softmax

# %%
bs = run_of(loss="balanced_softmax")
la = run_of(loss="logit_adjusted")  # Menon et al.'s loss, τ = 1
for name in ("balanced_softmax", "logit_adjusted"):
    print(f"{name}: {losses.LOSSES.get(name).summary}")
print(f"balanced accuracy: Balanced Softmax {bs.eval['balanced_accuracy']:.3f}, logit-adjusted loss {la.eval['balanced_accuracy']:.3f}")

# %% [markdown]
# The two losses are the same function: log n_c and log π_c differ by the constant log N, which softmax
# ignores, so with the same seed they train the same model (up to rounding). Against cross-entropy, per class:

# %%
plots.delta(ce, bs, "cross-entropy", "Balanced Softmax")

# %% [markdown]
# ## Margins: LDAM
# LDAM asks for a margin Δ_c ∝ n_c^(−1/4) on class c (the largest is `max_m` = 0.5), on a cosine
# classifier whose logits are scaled by s = 30: ℓ = −log softmax(s·(cos θ − Δ_y e_y))_y. Rare classes
# must clear a wider gap. Deferred re-weighting (DRW) keeps the first 80 % of training plain and then
# weights classes by their effective number (Cui et al., CVPR 2019).

# %%
ldam_loss = losses.build("ldam", counts)
plots.per_class_values(counts, {"Δ_c": ldam_loss.margins.numpy()}, names, "LDAM margins Δ_c ∝ n_c^(−1/4)", "margin (cosine units)")

# %%
ldam = run_of(loss="ldam")
ldam_drw = run_of(loss="ldam", schedule="drw")
runs = {"CE": ce, "CE + post-hoc τ=1": run_of(loss="ce", posthoc_tau=1.0), "Balanced Softmax": bs, "LDAM": ldam, "LDAM-DRW": ldam_drw}
pd.DataFrame({name: {k: r.eval[k] for k in SUMMARY} for name, r in runs.items()}).T.round(3)

# %%
plots.compare_per_class(list(runs.values()), labels=list(runs))

# %% [markdown]
# ## Margins per class
# Both prior corrections move margin from the head to the tail: head margins shrink, tail margins grow.
# Cross-entropy and Balanced Softmax share the linear head, so their margins are in the same units; LDAM's cosine logits are scaled by s = 30, so
# compare its *shape* across classes rather than its size.

# %%
margins = {name: runs[name].eval["per_class_margin"] for name in ("CE", "CE + post-hoc τ=1", "Balanced Softmax")}
plots.per_class_values(counts, margins, names, "Mean test margin per class", "mean margin")

# %%
plots.margin_vs_count(ldam_drw)

# %% [markdown]
# ## Try it
# Solutions: `solutions/03_logit_adjustment_and_margins.md`.
#
# **Exercise 1.** Choosing τ on the test set is cheating. Train with `val_fraction=0.2` (a validation
# split carved from the long-tailed training set), pick τ by *validation* balanced accuracy and report
# the test balanced accuracy at that τ. (The run stores `val_logits` and `val_labels`.)
#
# **Exercise 2.** Train Balanced Softmax *and* evaluate it with `posthoc_tau=1.0`. What happens, and why?
#
# **Exercise 3.** LDAM's largest margin `max_m` is a hyper-parameter (paper: 0.5). Try
# `loss_params={"max_m": m}` for m in 0.1, 0.5, 1.0 with DRW. Which classes move?
