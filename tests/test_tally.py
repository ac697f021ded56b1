"""Multi-domain long tail and TALLY: the domain datasets, selective balanced sampling, tally_mix, tally_proto."""

import json
import math

import numpy as np
import pytest
import torch

from ltlib import losses, mixing, plots, samplers
from ltlib.cli import main
from ltlib.data import FASHION_MNIST_DIR, load_dataset, long_tail_counts, make_long_tailed
from ltlib.metrics import evaluate
from ltlib.presets import preset
from ltlib.runs import load_run
from ltlib.train import train


@pytest.fixture(scope="module")
def domains_ds():
    return load_dataset("digits-domains")


def test_digits_domains_has_three_domains_with_different_class_orders(domains_ds):
    ds = domains_ds
    assert ds.num_domains == 3 and ds.input_shape == (3, 8, 8)
    orders = ds.domain_class_orders
    assert len({tuple(o) for o in orders}) == 3 and all(sorted(o) == list(range(10)) for o in orders)
    # The test set is balanced over (domain, class): every digits test image in every domain.
    cells = np.bincount(ds.domains_test.numpy() * 10 + ds.y_test.numpy(), minlength=30)
    assert set(cells.tolist()) == {50}
    # Domains differ only by their tint: domain 0 is the grey digit in the red channel.
    grey = load_dataset("digits")
    assert torch.equal(ds.x_test[: len(grey.y_test), 0], grey.x_test[:, 0])
    assert ds.x_train[ds.domains_train == 2].float().mean() > ds.x_train[ds.domains_train == 0].float().mean() + 50


def test_long_tail_is_per_domain_over_its_own_class_order(domains_ds):
    ds = domains_ds
    pool = np.bincount(ds.domains_train.numpy() * 10 + ds.y_train.numpy(), minlength=30).reshape(3, 10)
    lt = make_long_tailed(ds, 10, seed=1)
    counts = lt.domain_class_counts()
    for d, order in enumerate(ds.domain_class_orders):
        assert counts[d, order].tolist() == long_tail_counts(int(pool[d].min()), 10, 10)
    head_of_0, tail_of_0 = ds.domain_class_orders[0][0], ds.domain_class_orders[0][-1]
    assert counts[0, head_of_0] > 8 * counts[1, head_of_0]  # a head class of domain 0 is a tail class of domain 1
    assert counts[1, tail_of_0] > 8 * counts[0, tail_of_0]
    assert lt.class_counts().tolist() == counts.sum(0).tolist()
    assert torch.equal(lt.y_test, ds.y_test) and torch.equal(lt.domains_test, ds.domains_test)


def test_validation_split_keeps_domains_aligned(domains_ds):
    lt = make_long_tailed(domains_ds, 10, val_fraction=0.2)
    assert lt.domains_val is not None and len(lt.domains_val) == len(lt.y_val)
    assert set((lt.domains_val * 10 + lt.y_val).tolist()) == set(range(30))  # every cell has >= 4 images, so >= 1 in val
    assert len(lt.y_train) + len(lt.y_val) == make_long_tailed(domains_ds, 10).domain_class_counts().sum()


@pytest.mark.slow
@pytest.mark.skipif(not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists(), reason="Debian fashion-mnist package not installed")
def test_fashion_mnist_domains_splits_the_pool_and_repeats_the_test_set():
    ds = load_dataset("fashion-mnist-domains")
    assert ds.input_shape == (3, 28, 28) and ds.num_domains == 3
    assert len(ds.y_train) == 60000 and len(ds.y_test) == 30000
    assert set(np.bincount(ds.domains_train.numpy() * 10 + ds.y_train.numpy()).tolist()) == {2000}
    counts = make_long_tailed(ds, 100).domain_class_counts()
    assert counts.max() == 2000 and counts.min() == 20


def test_single_domain_datasets_have_no_domains_and_domain_counts_refuse():
    ds = make_long_tailed(load_dataset("digits"), 10, val_fraction=0.2)
    assert ds.domains_train is None and ds.domains_test is None and ds.domains_val is None and ds.num_domains == 0
    with pytest.raises(ValueError, match="has no domains"):
        ds.domain_class_counts()


def test_too_much_imbalance_names_the_domain(domains_ds):
    with pytest.raises(ValueError, match="of domain 'red' with zero training images"):
        make_long_tailed(domains_ds, 100)


def _empirical_pairs(labels, domains, sampler, n=100_000, seed=0):
    g = torch.Generator().manual_seed(seed)
    counts = np.bincount(labels.numpy())
    chosen = samplers.build(sampler, counts, 1)
    probs, within = chosen.probabilities(0), chosen.within_class(labels, domains)
    idx = samplers.draw_indices(labels, probs, n, g, within=within)
    num_classes = len(counts)
    freq = np.bincount((domains[idx] * num_classes + labels[idx]).numpy(), minlength=3 * num_classes) / n
    return freq.reshape(3, num_classes), idx


def test_selective_balanced_pair_frequencies_match_closed_form():
    # Class 0 lives in domains 0, 1, 2 (40, 5, 1 images); class 1 only in domain 0 (3); class 2 in domains 1, 2 (30, 2).
    cells = {(0, 0): 40, (1, 0): 5, (2, 0): 1, (0, 1): 3, (1, 2): 30, (2, 2): 2}
    labels = torch.tensor([c for (d, c), n in cells.items() for _ in range(n)])
    domains = torch.tensor([d for (d, c), n in cells.items() for _ in range(n)])
    freq, idx = _empirical_pairs(labels, domains, "selective_balanced")
    # P(d, c) = 1/C · 1/|D_c|: a class uniformly, then one of the domains that have it.
    expected = np.zeros((3, 3))
    for d, c in cells:
        expected[d, c] = 1 / 3 / sum(1 for dd, cc in cells if cc == c)
    assert np.abs(freq - expected).max() < 0.01
    # Within a pair images are uniform: the 40 images of (domain 0, class 0) each get ~1/40 of that cell.
    cell = np.bincount(idx.numpy(), minlength=len(labels))[:40]
    assert cell.min() > 0.6 * cell.mean() and cell.max() < 1.4 * cell.mean()
    # Plain class-balanced sampling spreads a class over its domains by count: clearly different.
    plain, _ = _empirical_pairs(labels, domains, "class_balanced")
    assert np.abs(plain - expected).max() > 0.1


def test_selective_balanced_on_digits_domains_is_uniform_over_pairs(domains_ds):
    lt = make_long_tailed(domains_ds, 10)
    freq, _ = _empirical_pairs(lt.y_train, lt.domains_train, "selective_balanced", seed=3)
    assert np.abs(freq - 1 / 30).max() < 0.01
    natural, _ = _empirical_pairs(lt.y_train, lt.domains_train, "instance", seed=3)
    assert np.abs(natural - 1 / 30).max() > 0.03


def test_other_samplers_keep_uniform_within_class():
    assert samplers.build("class_balanced", [1, 1], 1).within_class(torch.tensor([0, 1]), None) is None
    with pytest.raises(ValueError, match="selective_balanced needs a dataset with domains, e.g. digits-domains"):
        samplers.build("selective_balanced", [1, 1], 1).within_class(torch.tensor([0, 1]), None)


# ----------------------------------------------------------------------------- tally_mix

A = math.sqrt(3) / 2  # ±A over 4 pixels: mean 0, unbiased variance 1
N1 = torch.tensor([A, -A, A, -A]).reshape(1, 1, 4)
N2 = torch.tensor([A, A, -A, -A]).reshape(1, 1, 4)
N3 = torch.tensor([A, -A, -A, A]).reshape(1, 1, 4)
STYLE = {0: (2.0, 3.0), 1: (-1.0, 0.5)}  # domain: (μ, σ)


def _hand_batch():
    """Two class-0 images in domain 0 (contents N1, N2), one class-1 image in domain 1 (content N3)."""
    x = torch.stack([STYLE[0][1] * N1 + STYLE[0][0], STYLE[0][1] * N2 + STYLE[0][0], STYLE[1][1] * N3 + STYLE[1][0]])
    return x, torch.tensor([0, 0, 1]), torch.tensor([0, 0, 1])


def _mix(x, y, d, seed, epoch=1, **params):
    mixer = mixing.build("tally_mix", np.array([2, 1]), **{"alpha": 1e8, "warmup": 0.0, **params})
    ctx = mixing.MixContext(np.array([2, 1]), torch.Generator().manual_seed(seed), epoch, 2, num_domains=2, domains=d)
    return mixer, mixer(x, y, ctx)


def test_tally_mix_hand_case_mixes_content_within_class_and_style_across_domains():
    x, y, d = _hand_batch()
    donor_styles = []
    for seed in range(200):
        _, (out, y_a, y_b, lam) = _mix(x, y, d, seed)
        assert out.shape == x.shape and torch.equal(y_a, y) and torch.equal(y_b, y) and torch.equal(lam, torch.ones(3))
        # α → ∞ makes λ = ½; P_0 = (N1 + N2)/2 and P_1 = N3 (first batch), so the content of image 1 is
        # ½·N1 + ½·P_0 = ¾·N1 + ¼·N2 — class 0 only — and image 3 keeps N3.
        contents = [0.75 * N1 + 0.25 * N2, 0.25 * N1 + 0.75 * N2, N3]
        for i, content in enumerate(contents):
            # The style is a donor's: all images of a domain share it and M_d, S_d equal it, so μ' = μ_d, σ' = σ_d.
            matches = [dom for dom, (mu, sigma) in STYLE.items() if torch.allclose(out[i], sigma * content + mu, atol=2e-3)]
            assert len(matches) == 1, (seed, i, out[i])
            donor_styles.append(matches[0])
    # Donors are domain-balanced: domain 1 has one image of three but donates half of the styles.
    assert abs(np.mean(donor_styles) - 0.5) < 0.05


def test_tally_mix_prototypes_follow_the_momentum_formula():
    x, y, d = _hand_batch()
    mixer, _ = _mix(x, y, d, seed=0)
    p = mixer.prototypes
    assert torch.allclose(p["class"][0], (N1 + N2) / 2, atol=1e-5) and torch.allclose(p["class"][1], N3, atol=1e-5)
    assert torch.allclose(p["mu"].flatten(), torch.tensor([2.0, -1.0]), atol=1e-5)
    # A second batch with only class 0 in domain 1: P_0 ← 0.8·P_0 + 0.2·N3, M_1 ← 0.8·(−1) + 0.2·5, P_1 and M_0 unchanged.
    ctx = mixing.MixContext(np.array([2, 1]), torch.Generator().manual_seed(1), 1, 2, num_domains=2, domains=torch.tensor([1]))
    mixer(7.0 * N3[None] + 5.0, torch.tensor([0]), ctx)
    assert torch.allclose(p["class"][0], 0.8 * (N1 + N2) / 2 + 0.2 * N3, atol=1e-5)
    assert torch.allclose(p["class"][1], N3, atol=1e-5)
    assert torch.allclose(p["mu"].flatten(), torch.tensor([2.0, 0.8 * -1.0 + 0.2 * 5.0]), atol=1e-5)
    assert torch.allclose(p["sigma"].flatten(), torch.tensor([3.0, 0.8 * 0.5 + 0.2 * 7.0]), atol=1e-4)


def test_tally_mix_warmup_returns_the_batch_unchanged_and_checks_its_inputs():
    x, y, d = _hand_batch()
    mixer, (out, *_) = _mix(x, y, d, seed=0, epoch=0, warmup=0.5)
    assert torch.equal(out, x) and mixer.prototypes["class_seen"].all()  # prototypes still learn during warm-up
    with pytest.raises(ValueError, match="tally_mix needs a dataset with domains, e.g. digits-domains"):
        mixer(x, y, mixing.MixContext(np.array([2, 1]), torch.Generator()))
    with pytest.raises(ValueError, match=r"mixing 'tally_mix': momentum=1 is out of range; allowed: a number in \[0, 1\)"):
        mixing.build("tally_mix", np.array([2, 1]), momentum=1.0)
    with pytest.raises(ValueError, match="warmup=1.5 is out of range"):
        mixing.build("tally_mix", np.array([2, 1]), warmup=1.5)


# ----------------------------------------------------------------------------- tally_proto


def _standardise(f):  # per-sample standardisation (biased variance, ε = 1e-5, as layer_norm)
    return (f - f.mean(-1, keepdim=True)) / (f.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()


def test_tally_proto_prototypes_are_domain_averaged_momentum_means_and_loss_matches_formula():
    loss = losses.build("tally_proto", [5, 5, 5], weight=0.5, scale=4.0)
    # Class 0: two images in domain 0, one in domain 1; class 1: one image in domain 1; class 2 unseen.
    f1 = torch.tensor([[1.0, 0.0, 0.0, 3.0], [0.0, 2.0, 0.0, 2.0], [4.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 5.0]])
    y1, d1 = torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 1, 1])
    logits = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0], [0.0, 2.0, 1.0]])
    n = _standardise(f1)
    values = loss(logits, y1, reduction="none", features=f1, domains=d1)
    m00, m10 = (n[0] + n[1]) / 2, n[2]
    p0 = (m00 + m10) / 2  # each domain counts once, not ∝ its images (which would be (n0 + n1 + n2)/3)
    assert torch.allclose(loss.prototypes[0], p0, atol=1e-6) and torch.allclose(loss.prototypes[1], n[3], atol=1e-6)
    assert loss.seen.tolist() == [[True, False, False], [True, True, False]]
    assert not torch.allclose(p0, n[:3].mean(0), atol=1e-2)
    # ℓ_i = CE(z_i, y_i) + w·CE(s·cos(n_i, P), y_i); P_2 = 0 gives cosine 0.
    for i in range(4):
        cos = torch.stack([torch.nn.functional.cosine_similarity(n[i], p, dim=0) for p in (p0, n[3])] + [torch.tensor(0.0)])
        expected = -torch.log_softmax(logits[i], 0)[y1[i]] - 0.5 * torch.log_softmax(4.0 * cos, 0)[y1[i]]
        assert torch.isclose(values[i], expected, atol=1e-5)
    # The same features again (a mixed batch's second label set) do not update twice.
    loss(logits, y1, reduction="none", features=f1, domains=d1)
    assert torch.allclose(loss.prototypes[0], p0, atol=1e-6)
    # A new batch updates its cells by momentum, M ← 0.8·M + 0.2·(batch mean); a new domain grows the table.
    f2 = torch.tensor([[0.0, 0.0, 4.0, 1.0], [2.0, 1.0, 0.0, 0.0]])
    loss(logits[:2], torch.tensor([0, 0]), features=f2, domains=torch.tensor([1, 2]))
    n2 = _standardise(f2)
    assert torch.allclose(loss.prototypes[0], (m00 + (0.8 * m10 + 0.2 * n2[0]) + n2[1]) / 3, atol=1e-6)
    assert torch.allclose(loss.prototypes[1], n[3], atol=1e-6)
    with pytest.raises(ValueError, match="tally_proto needs a dataset with domains, e.g. digits-domains"):
        losses.build("tally_proto", [5, 5, 5])(logits, y1, features=f1, domains=None)


# ----------------------------------------------------------------------------- in training


@pytest.mark.parametrize("kw", [dict(sampler="selective_balanced"), dict(mixing="tally_mix"), dict(loss="tally_proto")])
def test_methods_needing_domains_refuse_digits_clearly(kw, isolated_home):
    name = next(iter(kw.values()))
    with pytest.raises(ValueError, match=f"{name} needs a dataset with domains, e.g. digits-domains"):
        train(preset("digits-quick", epochs=2, **kw))
    assert not isolated_home.exists() or not any(isolated_home.iterdir())


def test_registry_entries_declare_their_needs():
    assert samplers.SAMPLERS.get("selective_balanced").needs == ("domains",)
    assert mixing.MIXING.get("tally_mix").needs == ("domains", "images")
    assert losses.LOSSES.get("tally_proto").needs == ("domains",)
    assert mixing.MIXING.get("tally_mix").defaults == {"alpha": 0.5, "momentum": 0.8, "warmup": 7 / 15}


@pytest.mark.parametrize(
    "kw",
    [
        dict(sampler="selective_balanced"),
        dict(mixing="tally_mix"),
        dict(loss="tally_proto"),
        dict(sampler="selective_balanced", mixing="tally_mix", loss="tally_proto"),
    ],
)
def test_tally_methods_train_two_epochs_with_per_domain_accuracy(kw):
    result = train(preset("digits-domains-quick", epochs=2, eval_every=1, **kw))
    e = result.eval
    assert set(e["per_domain_accuracy"]) == {"red", "green on grey", "blue on yellow"}
    assert all(0 <= v <= 1 for v in e["per_domain_accuracy"].values())
    assert e["worst_domain_accuracy"] == min(e["per_domain_accuracy"].values())
    assert np.isclose(np.mean([np.mean(row) for row in e["domain_class_accuracy"]]), np.mean(list(e["per_domain_accuracy"].values())))
    assert e["balanced_accuracy"] > 0.2  # two epochs, well above chance
    assert "per_domain_accuracy" in result.history[-1]
    saved = json.loads((result.path / "eval.json").read_text())
    assert saved["per_domain_accuracy"] == e["per_domain_accuracy"]
    run = load_run(result.path)
    assert run.meta["domain_names"] == list(e["per_domain_accuracy"]) and np.array(run.meta["domain_class_counts"]).shape == (3, 10)
    a = run.arrays
    again = evaluate(
        a["test_logits"], a["test_labels"], a["class_counts"], domains=a["test_domains"], domain_names=run.meta["domain_names"]
    )
    assert again["per_domain_accuracy"] == e["per_domain_accuracy"]
    heat = plots.domain_class_accuracy(run).data[0]
    assert np.array(heat.z).shape == (3, 10) and np.array_equal(heat.text, run.meta["domain_class_counts"])


def test_per_domain_accuracy_hand_case():
    # Domain 0: class 0 right ×2, class 1 wrong ×1 → (1 + 0)/2; domain 1: class 0 right, class 1 right → 1.
    labels = np.array([0, 0, 1, 0, 1])
    pred = np.array([0, 0, 0, 0, 1])
    e = evaluate(np.eye(2)[pred] * 5, labels, np.array([3, 2]), domains=np.array([0, 0, 0, 1, 1]), domain_names=["a", "b"])
    assert e["per_domain_accuracy"] == {"a": 0.5, "b": 1.0} and e["worst_domain_accuracy"] == 0.5
    assert e["domain_class_accuracy"] == [[1.0, 0.0], [1.0, 1.0]]
    assert "per_domain_accuracy" not in evaluate(np.eye(2)[pred], labels, np.array([3, 2]))


def test_cli_lists_needs_and_trains_on_domains(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "selective_balanced" in out and "traits: domains" in out and "digits-domains-quick" in out
    args = ["train", "--preset", "digits-domains-quick", "--epochs", "1", "--sampler", "selective_balanced", "--quiet"]
    assert main([*args, "--mixing", "tally_mix", "--mixing-param", "warmup=0"]) == 0


def test_domain_heatmap_refuses_a_single_domain_run():
    run = load_run(train(preset("digits-quick", epochs=1)).path)
    with pytest.raises(ValueError, match="has no per-domain results"):
        plots.domain_class_accuracy(run)
