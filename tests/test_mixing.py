import numpy as np
import pytest
import torch
from torch import nn

from ltlib import mixing, samplers
from ltlib.losses import build as build_loss
from ltlib.models import DarBatchNorm2d, build_model, set_noise_mask
from ltlib.presets import preset
from ltlib.train import train

COUNTS = np.array([300, 100, 30, 10])
# Parameters that switch on the methods that wait for an epoch, so every test exercises them.
ACTIVE = {
    "cmo": {"start_epoch": -1, "end_epochs": 0, "prob": 1.0},
    "pure_noise": {"start_epoch": 0},
    "gae": {"start_epoch": 0},
    "tally_mix": {"warmup": 0.0},
}
# Methods that need a particular model: BBN's mixing returns a (B, 2, …) pair batch for the two-branch model.
MODEL_FOR = {"bbn": "bbn"}


def needs_domains(name):
    return "domains" in mixing.MIXING.get(name).needs


def make_ctx(draws=None, value=5.0, model=None, loss=None, epoch=0, epochs=10, domains=None):
    """A context whose draw_batch returns constant images of ``value`` and records the probabilities."""

    def draw_batch(probs, n):
        if draws is not None:
            draws.append(np.asarray(probs))
        y = torch.multinomial(torch.as_tensor(probs, dtype=torch.float32), n, replacement=True, generator=gen)
        return torch.full((n, 1, 8, 8), value), y

    gen = torch.Generator().manual_seed(0)
    return mixing.MixContext(COUNTS, gen, epoch, epochs, draw_batch, model, loss, domains=domains)


def batch(n=16):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g)


def tiny_model():
    return build_model("mlp", (1, 8, 8), 4)


@pytest.mark.parametrize("name", mixing.available())
def test_label_mass_shapes_and_dtypes(name):
    mixer = mixing.build(name, COUNTS, **ACTIVE.get(name, {}))
    x, y = batch()
    domains = torch.arange(len(y)) % 2 if needs_domains(name) else None
    model = build_model(MODEL_FOR.get(name, "mlp"), (1, 8, 8), 4)
    item_shape = (2, *x.shape[1:]) if name in MODEL_FOR else x.shape[1:]
    for _ in range(5):
        out, y_a, y_b, lam = mixer(x, y, make_ctx(model=model, loss=build_loss("ce", COUNTS), domains=domains))
        n = len(out)
        assert out.shape[1:] == item_shape and out.dtype == x.dtype and n >= len(y)
        assert y_a.dtype == y_b.dtype == torch.long and len(y_a) == len(y_b) == len(lam) == n
        assert bool(((y_a >= 0) & (y_a < 4) & (y_b >= 0) & (y_b < 4)).all())
        assert bool(((lam >= 0) & (lam <= 1)).all())  # λ on y_a, 1 − λ on y_b: mass one per sample
        weight = mixer.batch_weight
        assert weight is None or (weight.shape == (n,) and bool((weight >= 0).all()))


@pytest.mark.parametrize("name", mixing.available())
def test_traits_say_which_methods_draw_a_second_batch_and_which_run_eagerly(name):
    entry = mixing.MIXING.get(name)
    draws = []
    x, y = batch()
    domains = torch.arange(len(y)) % 2 if needs_domains(name) else None
    model = build_model(MODEL_FOR.get(name, "mlp"), (1, 8, 8), 4)
    mixer = mixing.build(name, COUNTS, **ACTIVE.get(name, {}))
    for _ in range(5):
        mixer(x, y, make_ctx(draws, model=model, loss=build_loss("ce", COUNTS), domains=domains))
    assert bool(draws) == ("second batch" in entry.traits)
    # Graph-capable: everything but the methods that step the model themselves (GAE, BBN's branches)
    # or keep per-domain statistics the graph does not capture yet (TALLY).
    assert (entry.eager is None) == (name not in ("gae", "bbn", "tally_mix"))


@pytest.mark.parametrize(
    "name, params, match",
    [
        ("mixup", {"alpha": 0.0}, r"mixing 'mixup': alpha=0 is out of range; allowed: a number in \(0, inf\)"),
        ("cutmix", {"prob": 1.5}, r"prob=1.5 is out of range; allowed: a number in \[0, 1\]"),
        ("remix", {"kappa": 0.5}, "kappa=0.5 is out of range"),
        ("cmo", {"start_epoch": -2}, "start_epoch=-2 is out of range"),
        ("open_sampling", {"ood_ratio": -1.0}, "ood_ratio=-1 is out of range"),
        ("pure_noise", {"delta": 2.0}, "delta=2 is out of range"),
        ("gae", {"steps": 0}, "steps=0 is out of range"),
        ("gae", {"steps": 1.5}, "steps=1.5 must be an integer"),
    ],
)
def test_bad_parameters_are_rejected_by_name(name, params, match):
    with pytest.raises(ValueError, match=match):
        mixing.build(name, COUNTS, **params)


def test_gae_hands_the_loss_the_features_and_domains():
    seen = []

    class Recording(nn.Module):
        def forward(self, logits, targets, reduction="mean", features=None, domains=None):
            seen.append((features, domains))
            return nn.functional.cross_entropy(logits, targets) + 0 * features.sum()

    model = tiny_model()
    x, y = batch()
    domains = torch.arange(len(y)) % 2
    mixing.build("gae", COUNTS, start_epoch=0, steps=2)(x, y, make_ctx(model=model, loss=Recording(), domains=domains))
    assert len(seen) == 2 and all(f is not None and f.shape == (len(y), model.feature_dim) and d is domains for f, d in seen)


def test_cutmix_lambda_is_the_kept_area():
    x = torch.arange(16.0).view(16, 1, 1, 1).expand(16, 1, 8, 8).clone()
    y = torch.arange(16) % 4
    mixer = mixing.build("cutmix", COUNTS)
    ctx = make_ctx()
    for _ in range(20):
        out, y_a, y_b, lam = mixer(x, y, ctx)
        kept = (out == x).float().mean((1, 2, 3))
        moved = (out[:, 0, 0, 0] != x[:, 0, 0, 0]) | (kept < 1)  # images paired with another image
        torch.testing.assert_close(kept[moved], lam[moved])


def test_paste_box_hand_case():
    x, src = torch.zeros(2, 1, 10, 10), torch.ones(2, 1, 10, 10)
    out, kept = mixing.paste_box(x, src, torch.tensor(0.75), torch.Generator().manual_seed(3))
    # side ratio √0.25 = ½ → at most a 5×5 box (smaller where clipped); kept = 1 − box area / 100
    assert float(kept) == pytest.approx(1 - out[0].sum().item() / 100) and out[0].sum() <= 25
    with pytest.raises(ValueError, match="image batches"):
        mixing.paste_box(torch.zeros(2, 5), torch.ones(2, 5), torch.tensor(0.5), torch.Generator())


def test_cmo_pastes_only_from_the_minority_batch():
    draws = []
    mixer = mixing.build("cmo", COUNTS, **ACTIVE["cmo"])
    x, y = torch.zeros(8, 1, 8, 8), torch.zeros(8, dtype=torch.long)
    for _ in range(10):
        out, y_a, y_b, lam = mixer(x, y, make_ctx(draws, value=7.0))
        assert set(out.unique().tolist()) <= {0.0, 7.0}  # original pixels or the minority batch's
        torch.testing.assert_close((out == 0).float().mean((1, 2, 3)), lam)
        assert torch.equal(y_a, y)
    # weighted_alpha = 1: per-image weight 1/n_c, so the pasted batch is class-balanced
    np.testing.assert_allclose(draws[0], samplers.class_probabilities("class_balanced", COUNTS), atol=1e-12)
    half = mixing.build("cmo", COUNTS, weighted_alpha=0.5).minority_probabilities()
    np.testing.assert_allclose(half, np.sqrt(COUNTS) / np.sqrt(COUNTS).sum(), atol=1e-12)


def test_cmo_waits_for_its_epochs():
    mixer = mixing.build("cmo", COUNTS, prob=1.0)  # official window: 3 < epoch < epochs − 3
    x, y = batch()
    for epoch, mixed in [(3, False), (4, True), (6, True), (7, False)]:
        _, y_a, y_b, lam = mixer(x, y, make_ctx(epoch=epoch, epochs=10))
        assert bool((lam < 1).any()) == mixed


def test_remix_label_rule_hand_case():
    mixer = mixing.build("remix", [300, 100, 10])
    y_i = torch.tensor([0, 0, 2, 2, 0, 1, 0])
    y_j = torch.tensor([2, 2, 0, 0, 1, 0, 0])
    # n_i/n_j:        30 30 1/30 1/30 3 1/3 1
    got = mixer.label_weight(y_i, y_j, torch.tensor(0.3))
    torch.testing.assert_close(got, torch.tensor([0.0, 0.0, 0.3, 0.3, 0.0, 0.3, 0.3]))
    got = mixer.label_weight(y_i, y_j, torch.tensor(0.7))
    torch.testing.assert_close(got, torch.tensor([0.7, 0.7, 1.0, 1.0, 0.7, 1.0, 0.7]))


def test_bilateral_mixup_draws_the_second_batch_reversed():
    draws = []
    out, y_a, y_b, lam = mixing.build("bilateral_mixup", COUNTS)(*batch(), make_ctx(draws, value=0.0))
    np.testing.assert_allclose(draws[0], samplers.class_probabilities("reverse", COUNTS), atol=1e-12)
    x, _ = batch()
    torch.testing.assert_close(out, lam[0] * x)  # the reversed batch is all zeros here


def test_open_sampling_complementary_labels_and_loss_weights():
    mixer = mixing.build("open_sampling", [6, 3, 1], ood_ratio=2.0, lambda_o=0.5)
    np.testing.assert_allclose(mixer.rates, [0.1, 0.4, 0.6], atol=1e-12)  # π_max + π_min − π
    x, y = torch.zeros(4, 1, 8, 8), torch.tensor([0, 0, 1, 2])
    out, y_a, y_b, lam = mixer(x, y, make_ctx())
    assert len(out) == 12 and torch.equal(out[:4], x) and torch.equal(y_a, y_b) and bool((lam == 1).all())
    ell = torch.arange(12.0)  # any per-sample losses
    w = torch.tensor([0.1, 0.4, 0.6])[y_a[4:]]
    expected = ell[:4].mean() + 0.5 * (w * ell[4:]).sum() / w.sum()
    torch.testing.assert_close((mixer.batch_weight * ell).mean(), expected)
    labels = mixer(torch.zeros(2000, 1, 8, 8), torch.zeros(2000, dtype=torch.long), make_ctx())[1][2000:]
    np.testing.assert_allclose(np.bincount(labels.numpy(), minlength=3) / 4000, [0.1 / 1.1, 0.4 / 1.1, 0.6 / 1.1], atol=0.02)


def test_pure_noise_replaces_minority_images_and_sets_the_mask():
    model = build_model("cnn", (1, 8, 8), 4, norm="dar_bn")
    mixer = mixing.build("pure_noise", COUNTS, delta=1.0, start_epoch=0)
    np.testing.assert_allclose(mixer.replace_prob, 1 - COUNTS / 300, atol=1e-12)  # δ·(1 − n_c/n_max)
    out, y_a, _, _ = mixer(*batch(4000), make_ctx(value=5.0, model=model))
    mask = next(m for m in model.modules() if isinstance(m, DarBatchNorm2d)).noise_mask
    assert torch.equal(mask, (out != 5.0).any(3).any(2).any(1))  # noise exactly where the mask says
    rate = [mask[y_a == c].float().mean().item() for c in range(4)]
    np.testing.assert_allclose(rate, 1 - COUNTS / 300, atol=0.05)  # the head class (n_max) never


def test_gae_moves_only_majority_images_within_eps():
    model, loss = tiny_model(), build_loss("ce", COUNTS)
    mixer = mixing.build("gae", COUNTS, eps=0.2, steps=2, start_epoch=0)
    x, y = batch(64)
    out, y_a, y_b, lam = mixer(x, y, make_ctx(model=model, loss=loss))
    moved = (out != x).flatten(1).any(1)
    major = torch.as_tensor(COUNTS > np.median(COUNTS))[y]
    assert bool(moved[major].all()) and not bool(moved[~major].any())
    assert float((out - x).abs().max()) <= 0.2 + 1e-6 and torch.equal(y_a, y)
    assert all(p.grad is None for p in model.parameters())  # probing leaves no gradients behind


def test_dar_bn_uses_separate_statistics_hand_case():
    bn = DarBatchNorm2d(1, momentum=1.0)  # momentum 1: running stats = the last batch's
    with torch.no_grad():
        bn.weight.fill_(2.0), bn.bias.fill_(1.0)
    x = torch.tensor([1.0, 3.0, 10.0, 30.0]).view(4, 1, 1, 1)  # natural: 1, 3; noise: 10, 30
    bn.noise_mask = torch.tensor([False, False, True, True])
    out = bn(x).flatten()
    eps = bn.eps
    # natural: mean 2, var 1 → ±1/√(1+ε); noise: mean 20, var 100 → ±10/√(100+ε); then ×2 + 1
    expected = torch.tensor([-1 / (1 + eps) ** 0.5, 1 / (1 + eps) ** 0.5, -10 / (100 + eps) ** 0.5, 10 / (100 + eps) ** 0.5]) * 2 + 1
    torch.testing.assert_close(out, expected)
    assert float(bn.running_mean) == pytest.approx(2.0) and float(bn.running_var) == pytest.approx(2.0)  # unbiased var of 1, 3
    plain = nn.BatchNorm2d(1)
    with torch.no_grad():
        plain.weight.fill_(2.0), plain.bias.fill_(1.0)
    bn.noise_mask = None
    torch.testing.assert_close(bn(x), plain(x))  # without a mask it is batch norm
    bn.eval()
    bn.noise_mask = torch.tensor([False, False, True, True])
    assert torch.equal(bn(x), nn.functional.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, eps=eps))


def test_set_noise_mask_reaches_every_dar_bn_layer():
    model = build_model("resnet8", (3, 32, 32), 4, norm="dar_bn")
    mask = torch.tensor([True, False])
    set_noise_mask(model, mask)
    layers = [m for m in model.modules() if isinstance(m, DarBatchNorm2d)]
    assert len(layers) == 7 and all(m.noise_mask is mask for m in layers)
    model(torch.randn(2, 3, 32, 32)).sum().backward()  # mixed batch: both paths differentiable


@pytest.mark.parametrize("name", mixing.available())
def test_every_mixing_method_trains_in_the_loop(name):
    base = "digits-domains-quick" if needs_domains(name) else "digits-quick"
    cfg = preset(base, epochs=2, mixing=name, mixing_params=ACTIVE.get(name, {}), model=MODEL_FOR.get(name, "mlp"))
    result = train(cfg, save=False)
    assert np.isfinite(result.history[-1]["loss"]) and result.eval["balanced_accuracy"] > 0


def test_pure_noise_with_dar_bn_cnn_trains():
    cfg = preset("digits-quick", epochs=2, model="cnn", norm="dar_bn", mixing="pure_noise", mixing_params={"start_epoch": 0})
    assert np.isfinite(train(cfg, save=False).history[-1]["loss"])


def test_image_methods_reject_feature_datasets():
    with pytest.raises(ValueError, match="mixing 'cutmix' needs images"):
        train(preset("digits-quick", dataset="toy2d", epochs=1, mixing="cutmix"), save=False)
