Source of notebooks/07_multi_domain_long_tail.ipynb — edit here, then run `python notebooks/build.py`.

# %% [markdown]
# # 7 · Multi-domain long tail
#
# So far every training image came from one distribution. Real data often comes from several *domains*
# — cameras, hospitals, photo vs sketch — and each domain has its own long tail: a class that is common
# in one domain can be rare in another. The goal is a model that is good on **every class in every
# domain**, so we report accuracy per domain and its worst case.
#
# **Paper.** Yang, Yao, Zhou & Finn, *Multi-Domain Long-Tailed Learning by Augmenting Disentangled
# Representations* (TALLY), TMLR 2023. TALLY combines
# 1. *selective balanced sampling*: draw a class uniformly, then a domain that has it uniformly;
# 2. *augmentation*: keep an image's semantics (mixed with its class prototype), give it the
#    domain-associated statistics ("style") of an image from another domain;
# 3. *domain-invariant class prototypes* that average out domain effects.
#
# In `ltlib` these are the sampler `selective_balanced`, the mixing `tally_mix` and the loss
# `tally_proto`; `docs/methods.md` lists where they differ from the official code.

# %% [markdown]
# ## Parameters
# `digits-domains-quick`: the 8×8 digits rendered in three colour-tint domains, each long-tailed
# (imbalance 10) over its *own* class order; an MLP, 30 epochs. On a GPU, switch `OVERRIDES` to the
# Fashion-MNIST version with a CNN.

# %%
PRESET = "digits-domains-quick"
OVERRIDES = {}  # a GPU user: {"dataset": "fashion-mnist-domains", "model": "cnn", "batch_size": 128}
SEED = 0
FIGURES = "figures"

# %%
from pathlib import Path

import pandas as pd

from ltlib import plots
from ltlib.data import load_dataset, make_long_tailed
from ltlib.presets import preset
from ltlib.runs import load_run
from ltlib.train import train

FIGURES = Path(FIGURES)
cfg = preset(PRESET, seed=SEED, **OVERRIDES)
data = make_long_tailed(load_dataset(cfg.dataset, **cfg.dataset_params), cfg.imbalance, cfg.profile, cfg.seed)
print(f"{data.name}: domains {data.domain_names}, {len(data.y_train)} training images")

# %% [markdown]
# ## Each domain has its own tail
# Training images per (domain, class). Within a domain the largest class has 10× the images of the
# smallest; summed over domains the classes are far less imbalanced, so a single-domain view hides the
# problem.

# %%
table = pd.DataFrame(data.domain_class_counts(), index=data.domain_names, columns=data.class_names)
table.loc["all domains"] = table.sum()
table

# %% [markdown]
# ## Cross-entropy vs the parts of TALLY
# One run per method on the same data. `worst_domain_accuracy` is the lowest of the per-domain
# accuracies (each a mean over the domain's classes, as TALLY reports it).

# %%
METHODS = {
    "CE": {},
    "selective_balanced": {"sampler": "selective_balanced"},
    "tally_mix": {"mixing": "tally_mix"},
    "TALLY (sampler + mix)": {"sampler": "selective_balanced", "mixing": "tally_mix"},
}
runs = {name: load_run(train(preset(PRESET, seed=SEED, **OVERRIDES, **overrides)).run_id) for name, overrides in METHODS.items()}
results = {
    name: {"balanced_accuracy": r.eval["balanced_accuracy"], "worst_domain": r.eval["worst_domain_accuracy"], **r.eval["per_domain_accuracy"]}
    for name, r in runs.items()
}
pd.DataFrame(results).T.round(3)

# %%
plots.per_domain_accuracy({name: r.eval for name, r in runs.items()})

# %% [markdown]
# Where does cross-entropy fail? Test accuracy per (domain, class), each cell labelled with its number of
# training images: the weak cells are the ones that are rare *in their domain*.

# %%
fig = plots.domain_class_accuracy(runs["CE"])
FIGURES.mkdir(exist_ok=True)
plots.save(fig, FIGURES / "domain_class_accuracy_ce.pdf")
fig

# %% [markdown]
# On this toy (an MLP on 8×8 images with input-level styles) the differences between methods are small
# — about one standard deviation over seeds, see the 3-seed table in `docs/methods.md`. TALLY's gains in
# the paper are on ResNet-50 features of real multi-domain data; this notebook shows the mechanism, not
# a reproduction.

# %% [markdown]
# ## Try it
# Solutions: `solutions/07_multi_domain_long_tail.md`.
#
# **Exercise 1.** Replace `selective_balanced` by the single-domain `class_balanced` sampler. How do the
# two samplers differ in which (domain, class) cells they draw? Compare the draws with
# `ltlib.samplers.class_probabilities` and the per-domain accuracies.
#
# **Exercise 2.** Run each method with seeds 0, 1 and 2 and report mean ± standard deviation of the
# worst-domain accuracy. Which differences survive?
#
# **Exercise 3.** Add the prototype loss: `{"sampler": "selective_balanced", "mixing": "tally_mix",
# "loss": "tally_proto"}`. What does it do to balanced and worst-domain accuracy here?
