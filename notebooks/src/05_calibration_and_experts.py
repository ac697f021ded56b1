Source of notebooks/05_calibration_and_experts.ipynb — edit here, then run `python notebooks/build.py`.

# %% [markdown]
# # 5 · Calibration and experts
#
# Accuracy is not the whole story: when a model says "90 % sure", it should be right 90 % of the time.
# On a long-tailed problem calibration has a twist — the model learned the *training* prior, so its
# confidence is off on a balanced test set in a class-dependent way.
#
# **Papers.**
# - Guo, Pleiss, Sun & Weinberger, *On Calibration of Modern Neural Networks*, ICML 2017 — reliability
#   diagrams, expected calibration error (ECE), temperature scaling.
# - Kull, Perello-Nieto, Kängsepp, Silva Filho, Song & Flach, *Beyond temperature scaling: obtaining
#   well-calibrated multiclass probabilities with Dirichlet calibration*, NeurIPS 2019 — classwise ECE.
# - Zhang, Cisse, Dauphin & Lopez-Paz, *mixup: Beyond Empirical Risk Minimization*, ICLR 2018;
#   Thulasidasan, Chennupati, Bilmes, Bhattacharya & Michalak, *On Mixup Training: Improved Calibration
#   and Predictive Uncertainty for Deep Neural Networks*, NeurIPS 2019.
# - Sanchez Aimar, Jonnarth, Felsberg & Kuhlmann, *Balanced Product of Calibrated Experts for Long-Tailed
#   Recognition* (BalPoE), CVPR 2023.

# %% [markdown]
# ## Parameters

# %%
PRESET = "digits-quick"  # a GPU user: "cifar10-lt"
SEED = 0
N_BINS = 15  # confidence bins of the reliability diagram and ECE (Guo et al. use 15)
FIGURES = "figures"

# %%
from pathlib import Path

import pandas as pd

from ltlib import calibration, metrics, plots
from ltlib.presets import preset
from ltlib.runs import load_run
from ltlib.train import train

FIGURES = Path(FIGURES)
CALIBRATION = ["balanced_accuracy", "ece", "classwise_ece", "nll", "brier"]


def run_of(**overrides):
    """Train PRESET with ``overrides`` and load the saved run."""
    return load_run(train(preset(PRESET, seed=SEED, **overrides)).run_id)


def probabilities(run, **adjustments):
    """Test-set softmax probabilities of a run, after optional ``calibration.adjust`` settings."""
    out = calibration.Outputs.from_run(run)
    return metrics.softmax(calibration.adjust(out, **adjustments)), out.labels


ce = run_of()

# %% [markdown]
# ## Reliability diagrams and ECE
# Sort the test predictions into bins by confidence (the top softmax probability). In each bin compare
# the mean confidence with the accuracy; the bars' red part is the gap. The expected calibration error
# weights each bin's gap by its share of the test set:
#
# $$\mathrm{ECE} = \sum_{b=1}^{B} \frac{|B_b|}{N}\,\bigl|\mathrm{acc}(B_b) - \mathrm{conf}(B_b)\bigr| .$$

# %%
probs, labels = probabilities(ce)
fig = plots.reliability(probs, labels, N_BINS, title=f"Cross-entropy — ECE {metrics.expected_calibration_error(probs, labels, N_BINS):.3f}")
FIGURES.mkdir(exist_ok=True)
plots.save(fig, FIGURES / "reliability_ce.pdf")
fig

# %%
plots.confidence_histogram(probs, labels, N_BINS)

# %% [markdown]
# ## Label shift is a calibration error
# The model's softmax estimates the *training* posterior, which includes the prior π. On a balanced test
# set the correct posterior divides π out (notebook 3). Removing the prior — post hoc or in the loss —
# fixes much of the miscalibration, and unevenly across classes: classwise ECE (one-vs-rest, per class)
# shows where.

# %%
bs = run_of(loss="balanced_softmax")
runs = {"CE": ce, "CE + post-hoc τ=1": run_of(posthoc_tau=1.0), "Balanced Softmax": bs}
cw = {name: metrics.classwise_ece(*probabilities(r), N_BINS) for name, r in runs.items()}
plots.per_class_values(ce.eval["class_counts"], cw, ce.meta["class_names"], "Classwise ECE per class", "ECE of p_c")

# %% [markdown]
# ## Mixup
# Mixup trains on convex combinations of images and of their labels. Its soft targets discourage
# saturated softmax outputs, which Thulasidasan et al. found improves calibration of over-confident deep
# networks; BalPoE relies on it for the same reason. How much it helps depends on how over-confident the
# model was — and too much mixing makes a small model *under*-confident.

# %%
runs["Mixup α=1"] = run_of(mixing="mixup")
runs["Mixup α=0.2"] = run_of(mixing="mixup", mixing_params={"alpha": 0.2})
pd.DataFrame({name: {k: r.eval[k] for k in CALIBRATION} for name, r in runs.items()}).T.round(3)

# %% [markdown]
# On `digits-quick` Mixup with α = 0.2 lowers ECE but costs accuracy: mixing is a regulariser, and 30
# epochs of a small MLP are too few to fit mixed targets (the papers train for hundreds of epochs). The
# largest calibration gain on the balanced test set came from removing the prior.

# %%
probs, labels = probabilities(runs["Mixup α=0.2"])
plots.reliability(probs, labels, N_BINS, title=f"Mixup α=0.2 — ECE {metrics.expected_calibration_error(probs, labels, N_BINS):.3f}")

# %% [markdown]
# ## Temperature scaling — on which data?
# Temperature scaling divides the logits by one T > 0, fitted to minimise the NLL of a held-out split; T
# changes confidence, never the prediction. Our only held-out data is a validation split carved from the
# *long-tailed* training set:

# %%
held_out = run_of(val_fraction=0.2)
out = calibration.Outputs.from_run(held_out)
T = calibration.fit_temperature(out.val_logits, out.val_labels)
before = metrics.evaluate(out.logits, out.labels, out.class_counts)
after = metrics.evaluate(calibration.adjust(out, temperature=T), out.labels, out.class_counts)
print(f"T = {T:.2f}; test ECE {before['ece']:.3f} → {after['ece']:.3f}, test NLL {before['nll']:.3f} → {after['nll']:.3f}")

# %% [markdown]
# ## Experts: BalPoE
# A balanced product of experts trains K classifier heads on a shared backbone. Expert k learns the
# logit-adjusted loss for the test prior π^λ_k,
#
# $$\ell_k = -\log \operatorname{softmax}\bigl(z_k + (1-\lambda_k)\log\pi\bigr)_y ,$$
#
# so λ = 1 is plain cross-entropy (head-favouring), λ = 0 the balanced prior and λ = −1 favours the tail
# (defaults λ = (1, 0, −1)). The prediction averages the experts' logits; with mean λ̄ = 0 the product
# targets the balanced prior. The paper trains with Mixup to keep the experts calibrated.

# %%
runs["BalPoE"] = run_of(loss="balpoe")
runs["BalPoE + Mixup α=0.2"] = run_of(loss="balpoe", mixing="mixup", mixing_params={"alpha": 0.2})
pd.DataFrame({name: {k: r.eval[k] for k in CALIBRATION} for name, r in runs.items()}).T.round(3)

# %% [markdown]
# On `digits-quick` BalPoE is the most accurate model in the table, and Mixup makes it more accurate still
# with lower NLL, Brier score and classwise ECE — although its top-label ECE rises a little. Each expert
# alone, against their product:

# %%
plots.expert_accuracy(runs["BalPoE + Mixup α=0.2"])

# %%
probs, labels = probabilities(runs["BalPoE + Mixup α=0.2"])
plots.reliability(probs, labels, N_BINS, title=f"BalPoE + Mixup α=0.2 — ECE {metrics.expected_calibration_error(probs, labels, N_BINS):.3f}")

# %% [markdown]
# ## Try it
# Solutions: `solutions/05_calibration_and_experts.md`.
#
# **Exercise 1.** Temperature scaling above made the balanced test set *worse* calibrated. Why? Look at
# the validation labels (`np.bincount(out.val_labels)`) and at accuracy vs confidence on the validation
# split. What would a fair held-out set look like?
#
# **Exercise 2.** Sweep Mixup's α over 0.2, 0.5, 1 and 2. Plot ECE and balanced accuracy against α with
# `plots.sweep`.
#
# **Exercise 3.** Compute the cross-entropy model's ECE with 5, 15 and 50 bins. Explain what you see.
