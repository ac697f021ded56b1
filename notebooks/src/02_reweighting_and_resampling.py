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
# - Mahajan, Girshick, Ramanathan, He, Paluri, Li, Bharambe & van der Maaten, *Exploring the Limits of
#   Weakly Supervised Pretraining*, ECCV 2018 — square-root sampling.
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
# equally often (p_c = 1/C), so each tail image is repeated many times per epoch; *square-root* sampling
# (Mahajan et al., ECCV 2018) sits between them with p_c ∝ √n_c; *progressive* sampling moves from
# instance- to class-balanced over training, p = (1 − t/T)·p_instance + (t/T)·p_balanced.

# %%
epochs = cfg.epochs
probs = {name: samplers.class_probabilities(name, counts) for name in ("instance", "sqrt", "class_balanced")}
probs |= {f"progressive, epoch {t}": samplers.class_probabilities("progressive", counts, t, epochs) for t in (epochs // 2, epochs - 1)}
plots.per_class_values(counts, probs, names, "Probability of drawing each class", "p_c")

# %% [markdown]
# ## Training with each
# The class-balanced loss re-weights through the whole run. **Deferred** re-weighting (DRW) trains with
# plain cross-entropy and switches the same effective-number weights on at 80 % of training, once the
# features are learned.

# %%
runs = {
    "CE": run_of(),
    "class-balanced loss": run_of(loss="class_balanced"),
    "class-balanced sampler": run_of(sampler="class_balanced"),
    "square-root sampler": run_of(sampler="sqrt"),
    "progressive sampler": run_of(sampler="progressive"),
    "CE + DRW": run_of(schedule="drw"),
}
pd.DataFrame({name: {k: r.eval[k] for k in ("balanced_accuracy", "many", "medium", "few", "ece")} for name, r in runs.items()}).T.round(3)

# %% [markdown]
# ## The head–tail trade-off
# Each method buys tail accuracy with head accuracy; the good ones buy more than they pay.

# %%
plots.tradeoff({name: r.eval for name, r in runs.items()})

# %%
plots.delta(runs["class-balanced loss"], runs["CE + DRW"], "class-balanced loss", "CE + DRW")

# %% [markdown]
# Re-weighting from the first epoch pushes hard toward the few-shot classes but gives up the medium ones
# and leaves the model badly calibrated: large weights on a handful of images make training noisy and
# the features poor. Deferring the weights to the last epochs keeps the features of cross-entropy and
# re-balances only the decision boundaries. The training curves show the switch (the loss jumps when the
# weights change):

# %%
plots.training_curves(runs["CE + DRW"].history)

# %% [markdown]
# ## Try it
# Solutions: `solutions/02_reweighting_and_resampling.md`.
#
# **Exercise 1.** Train the class-balanced loss with β = 0.9, 0.99 and 0.999
# (`loss="class_balanced", loss_params={"beta": b}`). Which β works best on this data, and how does that
# relate to the class sizes?
#
# **Exercise 2.** Move the DRW switch: `schedule_params={"start_epoch": e}` for e = 10, 20, 28 (of 30).
# What happens when it starts too early or too late?
#
# **Exercise 3.** With the class-balanced sampler, how many times per epoch is the single training image
# of the rarest class drawn, on average? (An epoch draws as many images as the training set has.)
