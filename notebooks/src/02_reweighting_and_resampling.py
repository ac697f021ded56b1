Source of notebooks/02_reweighting_and_resampling.ipynb — edit here, then run `python notebooks/build.py`.

# %% [markdown]
# # 2 · Re-weighting and re-sampling
#
# The oldest fixes for class imbalance change how much each class counts during training: either
# **re-weight** the loss (a tail image's loss counts more) or **re-sample** the data (tail images are
# drawn more often). Both shift the model toward the tail; the question is what they cost the head,
# and *when* during training to apply them.
#
# **Papers.**
# - Cui, Jia, Lin, Song & Belongie, *Class-Balanced Loss Based on Effective Number of Samples*, CVPR 2019
#   — weights by the effective number of samples.
# - Kang, Xie, Rohrbach, Yan, Gordo, Feng & Kalantidis, *Decoupling Representation and Classifier for
#   Long-Tailed Recognition*, ICLR 2020 — instance-, class-balanced, square-root and progressive sampling.
# - Cao, Wei, Gaidon, Arechiga & Ma, *Learning Imbalanced Datasets with Label-Distribution-Aware Margin
#   Loss*, NeurIPS 2019 — deferred re-weighting (DRW).

# %% [markdown]
# ## Parameters

# %%
PRESET = "digits-quick"  # a GPU user: "cifar10-lt"
SEED = 0
BETAS = [0.0, 0.9, 0.99, 0.999, 0.9999]  # effective-number β values to look at
FIGURES = "figures"

# %%
from pathlib import Path

import pandas as pd

from ltlib import losses, plots, samplers
from ltlib.data import load_dataset, make_long_tailed
from ltlib.presets import preset
from ltlib.runs import load_run
from ltlib.train import train

FIGURES = Path(FIGURES)
cfg = preset(PRESET, seed=SEED)
data = make_long_tailed(load_dataset(cfg.dataset, **cfg.dataset_params), cfg.imbalance, cfg.profile, cfg.seed)
counts, names = data.class_counts(), data.class_names
print(dict(zip(names, counts.tolist())))


def run_of(**overrides):
    """Train PRESET with ``overrides`` and load the saved run."""
    return load_run(train(preset(PRESET, seed=SEED, **overrides)).run_id)


# %% [markdown]
# ## Re-weighting by the effective number of samples
# Inverse-frequency weights 1/n_c treat the 100th image of a class as just as informative as the first.
# Cui et al. argue that images overlap: with β ∈ [0, 1) the *effective number* of n images is
#
# $$E_n = \frac{1-\beta^{n}}{1-\beta},$$
#
# which grows like n for small n and saturates at 1/(1−β). The class-balanced weight is w_c ∝ 1/E_{n_c},
# normalised so the weights sum to C. β = 0 gives equal weights, β → 1 inverse frequency.

# %%
weights = {f"β = {b}": losses.effective_number_weights(counts, b) for b in BETAS}
fig = plots.per_class_values(counts, weights, names, "Class-balanced weights w_c ∝ (1 − β) / (1 − β^n_c)", "weight")
FIGURES.mkdir(exist_ok=True)
plots.save(fig, FIGURES / "effective_number_weights.pdf")
fig

# %% [markdown]
# ## Re-sampling
# A sampler gives each class a probability of being drawn; images are drawn uniformly within a class.
# *Instance-balanced* is the ordinary shuffled epoch (p_c ∝ n_c); *class-balanced* draws every class
# equally often (p_c = 1/C), so each tail image is repeated many times per epoch. Square-root and
# progressive sampling (Kang et al.) land in `ltlib.samplers` later; the figure picks up every sampler
# registered.

# %%
probs = {name: samplers.class_probabilities(name, counts) for name in samplers.available()}
plots.per_class_values(counts, probs, names, "Probability of drawing each class", "p_c")

# %% [markdown]
# ## Training with each
# Re-weighting through the whole run is the class-balanced loss of Cui et al. (β = 0.9999); here it is
# the DRW schedule started at epoch 0. **Deferred** re-weighting (DRW) trains with plain cross-entropy
# and switches the weights on at 80 % of training, once the features are learned.

# %%
runs = {
    "CE": run_of(),
    "re-weighting (β=0.9999)": run_of(schedule="drw", schedule_params={"start_epoch": 0}),
    "class-balanced sampler": run_of(sampler="class_balanced"),
    "CE + DRW": run_of(schedule="drw"),
    "class-balanced sampler + DRW": run_of(sampler="class_balanced", schedule="drw"),
}
pd.DataFrame({name: {k: r.eval[k] for k in ("balanced_accuracy", "many", "medium", "few", "ece")} for name, r in runs.items()}).T.round(3)

# %% [markdown]
# ## The head–tail trade-off
# Each method buys tail accuracy with head accuracy; the good ones buy more than they pay.

# %%
plots.tradeoff({name: r.eval for name, r in runs.items()})

# %%
plots.delta(runs["CE"], runs["CE + DRW"], "CE", "CE + DRW")

# %% [markdown]
# Re-weighting from the first epoch is *worse* than plain cross-entropy here: large weights on a few
# images make early training noisy and the features poor. Deferring the weights to the last epochs keeps
# the features of cross-entropy and re-balances only the decision boundaries. The training curves show
# the switch (the loss jumps when the weights change):

# %%
plots.training_curves(runs["CE + DRW"].history)

# %% [markdown]
# ## Try it
# Solutions: `solutions/02_reweighting_and_resampling.md`.
#
# **Exercise 1.** Re-weight from the start with β = 0.9, 0.99 and 0.999
# (`schedule="drw", schedule_params={"start_epoch": 0, "beta": b}`). Which β works best on this data, and
# how does that relate to the class sizes?
#
# **Exercise 2.** Move the DRW switch: `schedule_params={"start_epoch": e}` for e = 10, 20, 28 (of 30).
# What happens when it starts too early or too late?
#
# **Exercise 3.** With the class-balanced sampler, how many times per epoch is the single training image
# of the rarest class drawn, on average? (An epoch draws as many images as the training set has.)
