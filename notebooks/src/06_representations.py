Source of notebooks/06_representations.ipynb — edit here, then run `python notebooks/build.py`.

# %% [markdown]
# # 6 · Representations
#
# A classifier is a feature extractor followed by a linear head. When a long-tailed model fails on the
# tail, is it because the *features* of tail images are poor, or because the *head* is biased toward the
# head classes? Here we look at the penultimate features directly: project them to 2-D and compare
# plain cross-entropy with two re-balancing methods.
#
# **Papers.**
# - Kang, Xie, Rohrbach, Yan, Gordo, Feng & Kalantidis, *Decoupling Representation and Classifier for
#   Long-Tailed Recognition*, ICLR 2020 — instance-balanced sampling learns the most general features;
#   re-balancing mostly helps the classifier (notebook 4 follows this up).
# - Zhou, Cui, Wei & Chen, *BBN: Bilateral-Branch Network with Cumulative Learning for Long-Tailed
#   Visual Recognition*, CVPR 2020 — re-balancing helps the classifier but can hurt representation learning.
# - Projections: PCA; McInnes, Healy & Melville, *UMAP*, arXiv 2018; van der Maaten & Hinton, *t-SNE*,
#   JMLR 2008.

# %% [markdown]
# ## Parameters
# PCA is instant. UMAP and t-SNE show local structure better but take 15–100 s on a laptop CPU the
# first time (UMAP compiles with numba); each projection is cached beside its run.

# %%
PRESET = "digits-quick"  # a GPU user: "cifar10-lt"
SEED = 0
PROJECTION = "pca"  # "umap" or "tsne" for a non-linear picture
METHODS = {
    "cross-entropy": {},
    "class-balanced sampler": {"sampler": "class_balanced"},
    "Balanced Softmax": {"loss": "balanced_softmax"},
}
FIGURES = "figures"

# %%
from pathlib import Path

import pandas as pd

from ltlib import embed, plots
from ltlib.presets import preset
from ltlib.runs import load_run
from ltlib.train import train

FIGURES = Path(FIGURES)
runs = {name: load_run(train(preset(PRESET, seed=SEED, **overrides)).run_id) for name, overrides in METHODS.items()}
pd.DataFrame({name: {k: r.eval[k] for k in ("balanced_accuracy", "many", "medium", "few")} for name, r in runs.items()}).T.round(3)

# %% [markdown]
# ## The features of each model
# Each point is a test image (balanced test set), coloured by its true class; classes are listed from
# head (most training images) to tail in the legend. Look for the tail classes: are their clusters
# compact and separate, or smeared into the head classes' clusters?

# %%
figures = {}
for name, run in runs.items():
    coords, labels = embed.run_embedding(run, PROJECTION)
    names = [f"{c} (n={n})" for c, n in zip(run.meta["class_names"], run.eval["class_counts"])]
    figures[name] = plots.embedding(coords, labels, names, title=f"{name}: {PROJECTION.upper()} of penultimate features")
figures["cross-entropy"]

# %%
FIGURES.mkdir(exist_ok=True)
plots.save(figures["cross-entropy"], FIGURES / f"embedding_ce_{PROJECTION}.pdf")
figures["class-balanced sampler"]

# %%
figures["Balanced Softmax"]

# %% [markdown]
# With cross-entropy (digits-quick, PCA) the head classes 0, 1 and 2 form separate clusters at the edges
# while the tail classes overlap in the middle: their few training images did not carve out a region.
# With the class-balanced sampler some tail classes (6, 7) get regions of their own and the head class 0
# is less isolated. Re-balancing pulls the tail into
# more of its own space — at some cost to the head, as the per-class comparison shows:

# %%
plots.compare_per_class(list(runs.values()), labels=list(runs))

# %% [markdown]
# ## Normalisation layers
# Batch normalisation pools its statistics over a batch. When a method feeds the network unusual inputs,
# those statistics stop describing the real images. OPeN (Zada, Benou & Irani, *Pure Noise to the Rescue
# of Insufficient Data*, ICML 2022) over-samples the tail and replaces part of the repeated images by
# pure noise; its **DAR-BN** normalises the noise images with their own batch statistics and the natural
# images with theirs, sharing the affine parameters. **Compound batch normalisation** (Cheng, Fang, Zhang,
# Li & Huang, *Compound Batch Normalization for Long-tailed Image Classification*, ACM MM 2022) models the
# feature statistics as a mixture of K Gaussians fitted by moving-average EM, so the tail's statistics are
# not swamped by the head's.
#
# The `digits-quick` MLP has no normalisation layer, so here we switch to the small CNN (`model="cnn"`).

# %%
from ltlib.models import NORMS

print({name: NORMS.get(name).summary for name in NORMS.available()})
cnn = {
    "CNN, batch norm": load_run(train(preset(PRESET, seed=SEED, model="cnn")).run_id),
    "CNN, compound BN": load_run(train(preset(PRESET, seed=SEED, model="cnn", norm="compound_bn")).run_id),
    "CNN, OPeN + batch norm": load_run(train(preset(PRESET, seed=SEED, model="cnn", mixing="pure_noise")).run_id),
    "CNN, OPeN + DAR-BN": load_run(train(preset(PRESET, seed=SEED, model="cnn", mixing="pure_noise", norm="dar_bn")).run_id),
}
pd.DataFrame({name: {k: r.eval[k] for k in ("balanced_accuracy", "many", "medium", "few", "ece")} for name, r in cnn.items()}).T.round(3)

# %% [markdown]
# On this toy, DAR-BN helps OPeN (noise images no longer distort the statistics of the real ones), while
# compound BN does not beat plain batch norm: with 8×8 digits and a two-block CNN there is little feature
# diversity for a mixture to model. Try both on `fashion-mnist-lt` or `cifar10-lt`.

# %% [markdown]
# ## Try it
# Solutions: `solutions/06_representations.md`.
#
# **Exercise 1.** Set `PROJECTION = "tsne"` (or `"umap"`) and re-run. Which conclusions from the PCA
# picture survive? What must you *not* read from a t-SNE/UMAP picture?
#
# **Exercise 2.** Add `"cross-entropy, ρ = 10": {"imbalance": 10}` to `METHODS`. How do the tail clusters
# change when the tail has more images?
#
# **Exercise 3.** Compute the mean feature norm ‖f‖ per class for each run (`run.arrays["features"]`,
# labels `run.arrays["test_labels"][run.arrays["feature_index"]]`, `ltlib.metrics.per_class_mean`) and
# plot it with `plots.per_class_values`. Do tail images get smaller features?
