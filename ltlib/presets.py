"""Named configurations: quick CPU presets for class and CI, and the CIFAR-10-LT paper recipe."""

from __future__ import annotations

from typing import Any

from ltlib.config import Config

PRESETS: dict[str, dict[str, Any]] = {
    # Seconds on a CPU: digits-LT (imbalance 100), an MLP, 30 epochs.
    "digits-quick": dict(
        dataset="digits", imbalance=100, model="mlp", epochs=30, batch_size=32, lr=0.05, weight_decay=5e-4, warmup_epochs=2, eval_every=5
    ),
    # Tens of seconds on a CPU: Fashion-MNIST-LT (imbalance 100), a small CNN.
    "fashion-mnist-lt": dict(
        dataset="fashion-mnist",
        imbalance=100,
        model="cnn",
        epochs=10,
        batch_size=128,
        lr=0.05,
        weight_decay=5e-4,
        warmup_epochs=1,
        # A test pass over the 10,000 images costs half a training epoch here: every other epoch is enough.
        eval_every=2,
    ),
    # The LDAM-DRW recipe (Cao et al. 2019): ResNet-32, 200 epochs, batch 128, SGD lr 0.1, wd 2e-4,
    # 5 warm-up epochs, then lr 0.1·0.01 from epoch 160 and 0.1·0.0001 from 180 (official cifar_train.py,
    # adjust_learning_rate: ×0.01 per milestone, which the CIFAR-LT papers after it reuse).
    "cifar10-lt": dict(
        dataset="cifar10",
        imbalance=100,
        model="resnet32",
        epochs=200,
        batch_size=128,
        lr=0.1,
        weight_decay=2e-4,
        warmup_epochs=5,
        lr_milestones=[160, 180],
        lr_gamma=0.01,
        eval_every=10,
    ),
}

# Seconds on a CPU: digits in 3 colour-tint domains, each long-tailed (imbalance 10, 42 … 4 images per
# class) over its own class order; for TALLY (selective_balanced, tally_mix, tally_proto).
PRESETS["digits-domains-quick"] = {**PRESETS["digits-quick"], "dataset": "digits-domains", "imbalance": 10}


def available() -> list[str]:
    return list(PRESETS)


def preset(name: str, **overrides: Any) -> Config:
    """The config of preset ``name`` with ``overrides`` applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return Config.from_dict({**PRESETS[name], **overrides})
