Source of notebooks/01_the_long_tail_problem.ipynb — edit here, then run `python notebooks/build.py`.

# %% [markdown]
# # 1 · The long-tail problem
#
# Real data sets are rarely balanced: a few *head* classes have most of the images and many *tail*
# classes have only a handful. A network trained with plain cross-entropy on such data is accurate on
# the head and poor on the tail — even though the test set, like the world we care about, is balanced.
#
# In this notebook we
# 1. build long-tailed versions of a data set at several imbalance ratios,
# 2. train the same small network with cross-entropy on each,
# 3. watch per-class accuracy and logit margins collapse on the tail, and
# 4. read the bias toward head classes off the confusion matrix.
#
# **Papers.** The long-tail profile is the one of Cui et al., *Class-Balanced Loss Based on Effective
# Number of Samples*, CVPR 2019, and Cao et al., *Learning Imbalanced Datasets with Label-Distribution-Aware
# Margin Loss* (LDAM), NeurIPS 2019: with C classes, the largest class n_max and imbalance ratio ρ,
# class c keeps
#
# $$n_c = \lfloor n_{\max} \cdot \rho^{-c/(C-1)} \rfloor ,\qquad c = 0,\dots,C-1 .$$
#
# Buda, Maki & Mazurowski, *A systematic study of the class imbalance problem in convolutional neural
# networks*, Neural Networks 2018, measured the damage for CNNs; Cao et al. tied it to the small
# margins of tail classes, which we measure below.

# %% [markdown]
# ## Parameters
# `digits-quick` trains an MLP on scikit-learn's 8×8 digits in about a second on a laptop CPU.
# On a GPU, set `PRESET = "cifar10-lt"` (ResNet-32, 200 epochs: the LDAM-DRW recipe).

# %%
PRESET = "digits-quick"  # a GPU user: "cifar10-lt"
RATIOS = [1, 10, 100]  # imbalance ratios ρ = n_max / n_min to compare
SEED = 0
FIGURES = "figures"  # where plots.save writes PDF/PNG/SVG files

# %%
from pathlib import Path

import pandas as pd

from ltlib import plots
from ltlib.data import class_groups, load_dataset, long_tail_counts, make_long_tailed
from ltlib.presets import preset
from ltlib.runs import load_run
from ltlib.train import train

FIGURES = Path(FIGURES)
base_cfg = preset(PRESET, seed=SEED)
base = load_dataset(base_cfg.dataset, **base_cfg.dataset_params)
print(f"{base.name}: {len(base.y_train)} training and {len(base.y_test)} test images, {base.num_classes} classes")

# %% [markdown]
# ## Building long-tailed training sets
# `make_long_tailed` subsamples the training pool with the profile above (the test set stays balanced).
# Each column below is one training set.

# %%
subsets = {rho: make_long_tailed(base, rho, seed=SEED) for rho in RATIOS}
pd.DataFrame({f"ρ = {rho}": d.class_counts() for rho, d in subsets.items()}, index=base.class_names)

# %%
long_tail = subsets[max(RATIOS)]
plots.class_counts(long_tail.class_counts(), long_tail.class_names, log=True, title=f"{base.name}-LT, ρ = {max(RATIOS)}")

# %% [markdown]
# The shaded bands are the *many / medium / few* groups every evaluation reports. The usual rule
# (>100, 20–100, <20 images) needs all three groups non-empty; on small data sets the library falls back
# to terciles of the classes ordered by count, and says so:

# %%
groups, rule = class_groups(long_tail.class_counts())
print(rule, {k: [base.class_names[c] for c in v] for k, v in groups.items()})

# %% [markdown]
# The same formula makes the standard benchmarks. Fashion-MNIST has 6000 training images per class,
# CIFAR-10 5000:

# %%
pd.DataFrame(
    {
        "Fashion-MNIST-LT ρ=100": long_tail_counts(6000, 10, 100),
        "CIFAR-10-LT ρ=100": long_tail_counts(5000, 10, 100),
        "CIFAR-10-LT ρ=10": long_tail_counts(5000, 10, 10),
        "CIFAR-10 step ρ=10": long_tail_counts(5000, 10, 10, profile="step"),
    }
).T.assign(total=lambda t: t.sum(axis=1))

# %% [markdown]
# ## Training with cross-entropy at each ratio
# One run per ratio, everything else equal. Each run is saved as a folder in the runs store, `$LTLIB_HOME`
# (default `runs` in `platformdirs.user_data_dir("ltlib")`), which the Streamlit app and the CLI read too.

# %%
runs = {}
for rho in RATIOS:
    result = train(preset(PRESET, imbalance=rho, seed=SEED))
    runs[rho] = load_run(result.run_id)
    print(f"ρ = {rho:>4}: balanced accuracy {result.eval['balanced_accuracy']:.3f}, few-shot {result.eval['few']:.3f}")

# %%
plots.sweep(RATIOS, [runs[rho].eval for rho in RATIOS], "imbalance ratio ρ", log_x=True, title="Cross-entropy under growing imbalance")

# %% [markdown]
# Head-class accuracy barely moves; the tail pays. Per class, side by side:

# %%
plots.compare_per_class([runs[rho] for rho in RATIOS], labels=[f"ρ = {rho}" for rho in RATIOS])

# %%
run = runs[max(RATIOS)]
fig = plots.per_class_accuracy(run)
FIGURES.mkdir(exist_ok=True)
plots.save(fig, FIGURES / "per_class_accuracy.pdf")  # .png and .svg work too
fig

# %% [markdown]
# ## Margins
# The *logit margin* of a test image is its true-class logit minus the largest other logit: positive
# means correct, and a large margin means a confident, robust decision. Cao et al. (2019) bound the
# balanced test error by terms in 1/(γ_c √n_c): classes with few images need *larger* margins γ_c,
# yet cross-entropy gives them smaller ones.

# %%
plots.margins(run)

# %%
plots.margin_vs_count(run)

# %% [markdown]
# ## The bias toward the head
# Rows of the confusion matrix are true classes ordered head → tail. Mass left of the diagonal in the
# lower rows means tail images predicted as head classes.

# %%
plots.confusion(run)

# %% [markdown]
# Counting where the predictions go makes the bias one picture: the test set is balanced (dashed line),
# but the head classes receive more than their share of predictions and the tail less.

# %%
plots.predictions_per_class(run)

# %% [markdown]
# ## Try it
# Solutions: `solutions/01_the_long_tail_problem.md`.
#
# **Exercise 1.** Train at ρ = 100 with the *step* profile (`profile="step"`: half the classes keep
# n_max, the other half n_max/ρ). Which profile hurts balanced accuracy more, and why?
#
# **Exercise 2.** Tail accuracy rests on a handful of training images. Train ρ = 100 with three
# seeds (`seed=0, 1, 2`) and compare the spread of the *few* accuracy with that of the *many* accuracy.
#
# **Exercise 3.** From the confusion matrix of `run`, find the class that the rarest class is most
# often mistaken for. Is it a head class? (Hint: `ltlib.metrics.confusion_matrix`.)
