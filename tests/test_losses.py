"""The loss zoo: every registered loss is finite, differentiable and trains; each matches its paper's
formula on a hand-computed case (3 classes, 2 samples) worked out here with math/numpy, not the library."""

import inspect
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ltlib import losses
from ltlib.families import eager_reason
from ltlib.presets import preset
from ltlib.train import train

COUNTS = [8, 2, 1]
COS = np.array([[0.5, 0.2, -0.1], [0.1, 0.3, 0.2]])  # cosines for the cosine-head losses
LOGITS = np.array([[2.0, 1.0, 0.0], [0.5, 0.5, 1.0]])
TARGETS = [0, 2]


def _t(a):
    return torch.tensor(a, dtype=torch.float32)


def _y():
    return torch.tensor(TARGETS)


def _ce(z, y):
    return -z[y] + math.log(sum(math.exp(v) for v in z))


def _sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v))


def _bce(z, label):  # −log σ(z) for label 1, −log(1 − σ(z)) for label 0
    return math.log(1 + math.exp(-z)) if label else math.log(1 + math.exp(z))


def _ldam_margins(max_m=0.5):
    m = np.array(COUNTS, float) ** -0.25
    return m * max_m / m.max()


def _extra(features):
    """What every caller passes to every loss: the features and the domain ids (all in domain 0 here)."""
    return {"features": features, "domains": torch.zeros(len(features), dtype=torch.long)}


def _preset_for(name):
    """digits-quick, or its multi-domain version for losses that need domains."""
    return "digits-domains-quick" if "domains" in losses.LOSSES.get(name).needs else "digits-quick"


# ---------------------------------------------------------------- every loss, generically


@pytest.mark.parametrize("name", losses.available())
def test_finite_loss_and_gradient_on_random_data(name):
    gen = torch.Generator().manual_seed(0)
    counts = [50, 20, 10, 5, 1]
    loss = losses.build(name, counts)
    # A loss that asks for the experts head (BalPoE) gets one logit row per expert: (batch, K, classes).
    shape = (16, loss.head_params["num_experts"], 5) if loss.head == "experts" else (16, 5)
    logits = torch.randn(*shape, generator=gen, requires_grad=True)
    features = torch.randn(16, 8, generator=gen)
    targets = torch.randint(0, 4, (16,), generator=gen)
    targets[3] = 4  # the rarest class has a single sample in this batch
    # Own layers (ResCom's projection head) sized by the model; prototypes from its head (GML, PAL).
    loss.attach(SimpleNamespace(feature_dim=features.shape[1], head=torch.nn.Linear(features.shape[1], 5, bias=False)))
    value = loss(logits, targets, **_extra(features))
    value.backward()
    assert value.ndim == 0 and torch.isfinite(value)
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    per_sample = loss(logits.detach(), targets, reduction="none", **_extra(features))
    assert per_sample.shape == (16,) and torch.isfinite(per_sample).all()


@pytest.mark.parametrize("name", losses.available())
def test_every_loss_has_a_paper_and_a_summary(name):
    entry = losses.LOSSES.get(name)
    assert entry.paper and entry.summary and entry.summary != name


@pytest.mark.parametrize("name", losses.available())
def test_every_loss_trains_two_epochs(name):
    result = train(preset(_preset_for(name), loss=name, epochs=2, eval_every=1), save=False)
    assert all(math.isfinite(h["loss"]) for h in result.history)
    assert 0.0 <= result.eval["balanced_accuracy"] <= 1.0


@pytest.mark.parametrize("name", losses.available())
def test_the_engine_follows_the_losses_declared_eager_reason(name):
    # Features, domains, layers of its own or a hook that updates buffers in place do not keep a loss
    # off the graph (the graph step hands them over as the eager loop does); a declared reason does.
    entry = losses.LOSSES.get(name)
    reason = eager_reason(preset("digits-quick", loss=name))
    assert (reason is not None) == (entry.eager is not None)


@pytest.mark.parametrize("name", losses.available())
def test_every_loss_behaves_as_its_traits_say(name):
    entry = losses.LOSSES.get(name)
    loss = losses.build(name, COUNTS)
    assert loss.traits == entry.traits
    assert ("epoch hook" in entry.traits) == hasattr(loss, "on_epoch_start")
    loss.attach(SimpleNamespace(feature_dim=4, head=torch.nn.Linear(4, len(COUNTS), bias=False)))
    assert ("own parameters" in entry.traits) == any(True for _ in loss.parameters())
    assert loss.needs_features == ("features" in entry.traits) and loss.needs_domains == ("domains" in entry.traits)
    head = {"cosine head": "cosine", "experts head": "experts"}
    assert loss.head == next((h for t, h in head.items() if t in entry.traits), "linear")
    # One way to call a loss: no subclass changes forward's signature.
    assert inspect.signature(type(loss).forward) == inspect.signature(losses.Loss.forward)


@pytest.mark.parametrize("name", [n for n in losses.available() if losses.LOSSES.get(n).traits & {"features", "domains"}])
def test_a_loss_that_reads_features_or_domains_says_so_when_they_are_missing(name):
    loss = losses.build(name, COUNTS)
    features, domains = torch.randn(2, 4), torch.zeros(2, dtype=torch.long)
    if "features" in loss.traits:
        with pytest.raises(ValueError, match=f"{name} needs features="):
            loss(_t(LOGITS), _y(), domains=domains)
    if "domains" in loss.traits:
        with pytest.raises(ValueError, match=f"{name} needs a dataset with domains"):
            loss(_t(LOGITS), _y(), features=features)


# ---------------------------------------------------------------- hand-computed cases


@pytest.mark.parametrize("base", ["softmax", "sigmoid", "focal"])
def test_class_balanced_hand_case(base):
    beta, gamma = 0.9, 1.5
    raw = np.array([(1 - beta) / (1 - beta**n) for n in COUNTS])
    w = raw / raw.sum() * 3
    per = []
    for z, y in zip(LOGITS, TARGETS):
        if base == "softmax":
            per.append(w[y] * _ce(z, y))
            continue
        total = 0.0
        for c in range(3):
            label = int(c == y)
            b = _bce(z[c], label)
            p_t = _sigmoid(z[c]) if label else 1 - _sigmoid(z[c])
            total += ((1 - p_t) ** gamma if base == "focal" else 1.0) * b
        per.append(w[y] * total)
    loss = losses.build("class_balanced", COUNTS, beta=beta, base=base, gamma=gamma)
    assert loss(_t(LOGITS), _y()).item() == pytest.approx(sum(per) / 2, abs=1e-5)  # divided by B, not Σ w


def test_class_balanced_weights_sum_to_number_of_classes_and_favour_rare_classes():
    w = losses.build("class_balanced", COUNTS).cb_weight.numpy()
    assert w.sum() == pytest.approx(3.0) and w[0] < w[1] < w[2]


def test_logit_adjusted_hand_case():
    tau = 0.5
    log_pi = [math.log(n / 11) for n in COUNTS]
    want = sum(_ce([v + tau * lp for v, lp in zip(z, log_pi)], y) for z, y in zip(LOGITS, TARGETS)) / 2
    assert losses.build("logit_adjusted", COUNTS, tau=tau)(_t(LOGITS), _y()).item() == pytest.approx(want, abs=1e-5)


def test_balanced_softmax_equals_logit_adjusted_with_tau_one():
    gen = torch.Generator().manual_seed(1)
    logits, targets = torch.randn(32, 5, generator=gen), torch.randint(0, 5, (32,), generator=gen)
    counts = [100, 30, 10, 3, 1]
    a = losses.build("balanced_softmax", counts)(logits, targets, reduction="none")
    b = losses.build("logit_adjusted", counts, tau=1.0)(logits, targets, reduction="none")
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    c = losses.build("logit_adjusted", counts, tau=0.0)(logits, targets)
    assert c.item() == pytest.approx(losses.build("ce", counts)(logits, targets).item(), abs=1e-6)


def test_cdt_hand_case():
    gamma = 0.5
    a = [(8 / n) ** gamma for n in COUNTS]
    want = sum(_ce([v / ac for v, ac in zip(z, a)], y) for z, y in zip(LOGITS, TARGETS)) / 2
    assert losses.build("cdt", COUNTS, gamma=gamma)(_t(LOGITS), _y()).item() == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize("name, s, class_aware", [("mm", 19.0, False), ("mm_ldam", 26.0, True)])
def test_mm_hand_case(name: str, s: float, class_aware: bool):
    # The official README / train.sh runs: HMM (one margin M for all classes) and HMM-LDAM (M − Δ_y).
    max_m, gamma = 1.29, 1.528
    delta = _ldam_margins(0.5)
    per = []
    for cos, y in zip(COS, TARGETS):
        d = cos[y] - max(v for j, v in enumerate(cos) if j != y)
        big_m = max_m - delta[y] if class_aware else max_m
        shift = math.exp(-d - gamma * big_m) if d > 0 else math.exp(-abs(d) - big_m)
        z = [s * (v - shift * (j == y)) for j, v in enumerate(cos)]
        per.append(_ce(z, y))
    # sample 0 is right (d = 0.3 > 0), sample 1 wrong (d = −0.1 < 0): both branches are exercised
    loss = losses.build(name, COUNTS)
    assert loss.head == "cosine" and loss.head_params == {"scale": s}
    assert loss(_t(COS * s), _y()).item() == pytest.approx(sum(per) / 2, abs=1e-4)


def test_gml_hand_case():
    s, lam_sm, lam_zc = 30.0, 0.5, 2.0
    delta = _ldam_margins(0.5)
    prototypes = np.array([[3.0, 0.0], [0.0, 2.0], [-1.0, -1.0]])
    unit = prototypes / np.linalg.norm(prototypes, axis=1, keepdims=True)
    zc = float((unit.mean(0) ** 2).sum())
    per = []
    for cos, y in zip(COS, TARGETS):
        z = [s * (v - delta[y] * (j == y)) for j, v in enumerate(cos)]
        d = cos[y] - max(v for j, v in enumerate(cos) if j != y)
        per.append(_ce(z, y) - lam_sm * d + lam_zc * zc)
    loss = losses.build("gml", COUNTS, lambda_sm=lam_sm, lambda_zc=lam_zc)
    loss.attach(SimpleNamespace(head=SimpleNamespace(weight=_t(prototypes))))
    assert loss(_t(COS * s), _y()).item() == pytest.approx(sum(per) / 2, abs=1e-4)


def test_pal_anchors_the_head_to_a_simplex_and_uses_the_margin_softmax():
    s = 30.0
    delta = _ldam_margins(0.5)
    want = sum(_ce([s * (v - delta[y] * (j == y)) for j, v in enumerate(cos)], y) for cos, y in zip(COS, TARGETS)) / 2
    loss = losses.build("pal", COUNTS)
    assert loss(_t(COS * s), _y()).item() == pytest.approx(want, abs=1e-4)

    head = torch.nn.Linear(16, 3, bias=False)
    loss.attach(SimpleNamespace(head=head))
    w = head.weight.detach().numpy()
    gram = w @ w.T
    np.testing.assert_allclose(np.diag(gram), 1.0, atol=1e-6)
    np.testing.assert_allclose(gram[~np.eye(3, dtype=bool)], -0.5, atol=1e-6)  # −1/(C − 1)
    assert not head.weight.requires_grad


def test_pal_head_stays_anchored_through_training():
    result = train(preset("digits-quick", loss="pal", epochs=2), save=False)
    w = result.model.head.weight.detach()
    torch.testing.assert_close(w, losses.simplex_prototypes(*w.shape))


def test_prototypes_spread_out_when_the_simplex_does_not_fit():
    p = losses.simplex_prototypes(10, 4)  # 10 classes, 4 feature dims: no simplex, optimised instead
    cos = p @ p.T
    torch.testing.assert_close(cos.diagonal(), torch.ones(10))
    start = torch.nn.functional.normalize(torch.randn(10, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    start_cos = (start @ start.T).fill_diagonal_(-2)
    assert cos.fill_diagonal_(-2).max() < 0.2 < start_cos.max()
    torch.testing.assert_close(losses.simplex_prototypes(10, 4, steps=20), losses.simplex_prototypes(10, 4, steps=20))  # deterministic


def test_coupling_regulation_hand_case_and_phased_schedule():
    s, gamma = 30.0, 1.0
    delta = _ldam_margins(0.5)
    raw = np.array([(1 - 0.9999) / (1 - 0.9999**n) for n in COUNTS])
    cb = raw / raw.sum() * 3
    loss = losses.build("coupling_regulation", COUNTS, phase_start=0.2, phase_end=0.6)
    state = SimpleNamespace(cfg=SimpleNamespace(epochs=10), log={})
    alphas = []
    for epoch in range(10):
        loss.on_epoch_start(epoch, state)
        alphas.append(state.log["reweight_alpha"])
    assert alphas == pytest.approx([0, 0, 0, 0.25, 0.5, 0.75, 1, 1, 1, 1])
    np.testing.assert_allclose(loss.class_weight.numpy(), cb, rtol=1e-5)  # fully re-weighted at the end

    per, ws = [], []
    for cos, y in zip(COS, TARGETS):
        z = [s * (v - delta[y] * (j == y)) for j, v in enumerate(cos)]
        p = math.exp(-_ce(z, y))
        per.append(cb[y] * -((1 - p) ** gamma) * math.log(p))
        ws.append(cb[y])
    assert loss(_t(COS * s), _y()).item() == pytest.approx(sum(per) / sum(ws), abs=1e-4)


def test_distribution_balanced_multilabel_hand_case():
    alpha, beta, mu, lam, kappa, gamma, balance, total = 0.1, 10.0, 0.2, 2.0, 0.05, 2.0, 2.0, 10
    labels = np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    per = []
    for z_row, y_row in zip(LOGITS, labels):
        repeat = sum(y / n for y, n in zip(y_row, COUNTS))
        terms = []
        for c in range(3):
            w = _sigmoid(beta * ((1 / COUNTS[c]) / repeat - mu)) + alpha
            prior_logit = -math.log(total / COUNTS[c] - 1)
            z = z_row[c] + kappa * prior_logit / lam
            if y_row[c]:
                b = math.log(1 + math.exp(-z))
            else:
                b = math.log(1 + math.exp(lam * z))
                w /= lam
            p_t = math.exp(-b)
            terms.append(balance * (1 - p_t) ** gamma * w * b)
        per.append(sum(terms) / 3)
    loss = losses.build("distribution_balanced", COUNTS, num_samples=total)
    assert loss(_t(LOGITS), _t(labels)).item() == pytest.approx(sum(per) / 2, abs=1e-5)


def test_distribution_balanced_integer_targets_are_one_hot():
    loss = losses.build("distribution_balanced", COUNTS)
    onehot = torch.nn.functional.one_hot(_y(), 3).float()
    assert loss(_t(LOGITS), _y()).item() == pytest.approx(loss(_t(LOGITS), onehot).item(), abs=1e-6)
    loss.set_class_weight(np.array([1.0, 2.0, 4.0]))  # DRW-style class weights work on multi-label targets too
    assert loss(_t(LOGITS), _y()).item() == pytest.approx(loss(_t(LOGITS), onehot).item(), abs=1e-6)


def test_ot_reweight_hand_case():
    eps, label_cost = 0.5, 1.0
    f = np.array([[1.0, 0.0], [0.6, 0.8]])  # batch features (unit norm)
    g = np.array([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]])  # meta features
    meta_y = [0, 2, 2]
    q = [1 / 2, 1 / 4, 1 / 4]  # two classes in the meta set, each of mass 1/2
    cost = [[1 - f[i] @ g[j] + label_cost * (TARGETS[i] != meta_y[j]) for j in range(3)] for i in range(2)]
    w = [0.0, 0.0]
    for j in range(3):
        col = [math.exp(-cost[i][j] / eps) for i in range(2)]
        for i in range(2):
            w[i] += q[j] * col[i] / sum(col)
    want = sum(w[i] * _ce(LOGITS[i], TARGETS[i]) for i in range(2))
    loss = losses.build("ot_reweight", COUNTS, eps=eps, label_cost=label_cost)
    loss.set_meta(_t(g), torch.tensor(meta_y))
    assert loss.batch_weights(_t(f), _y()).numpy() == pytest.approx(w, abs=1e-6)
    assert sum(w) == pytest.approx(1.0)
    assert loss(_t(LOGITS), _y(), features=_t(f)).item() == pytest.approx(want, abs=1e-5)


def test_ot_reweight_carves_a_balanced_meta_set_in_training():
    from ltlib.train import Config, Inputs, prepare_data

    cfg = preset("digits-quick", loss="ot_reweight")
    data = prepare_data(cfg)
    counts = data.class_counts()
    loss = losses.build("ot_reweight", counts, meta_per_class=5)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 7))
    model.features = model.forward
    state = SimpleNamespace(cfg=Config(), data=data, model=model, inputs=Inputs(data, torch.device("cpu")), device=torch.device("cpu"))
    loss.on_epoch_start(0, state)
    per_class = np.bincount(loss.meta_labels.numpy(), minlength=len(counts))
    np.testing.assert_array_equal(per_class, np.minimum(counts, 5))
    assert loss.meta_features.shape == (per_class.sum(), 7)


# ---------------------------------------------------------------- bad parameters


@pytest.mark.parametrize(
    "name, params, match",
    [
        ("class_balanced", {"beta": 1.0}, r"loss 'class_balanced': beta=1 is out of range; allowed: a number in \[0, 1\)"),
        ("class_balanced", {"beta": -0.1}, "beta=-0.1 is out of range"),
        ("class_balanced", {"gamma": -1.0}, "gamma=-1 is out of range"),
        ("class_balanced", {"base": "hinge"}, "base='hinge' is not allowed; allowed: softmax, sigmoid, focal"),
        ("logit_adjusted", {"tau": -0.5}, "tau=-0.5 is out of range"),
        ("cdt", {"gamma": -0.1}, "gamma=-0.1 is out of range"),
        ("mm", {"gamma": -1.0}, "gamma=-1 is out of range"),
        ("mm", {"s": 0.0}, r"s=0 is out of range; allowed: a number in \(0, inf\)"),
        ("gml", {"lambda_sm": -1.0}, "lambda_sm=-1 is out of range"),
        ("pal", {"max_m": -0.1}, "max_m=-0.1 is out of range"),
        ("balpoe", {"lambdas": []}, "lambdas=\\[\\] is not allowed"),
        ("coupling_regulation", {"gamma": -2.0}, "gamma=-2 is out of range"),
        ("coupling_regulation", {"beta": 1.0}, "beta=1 is out of range"),
        ("coupling_regulation", {"phase_start": 0.8, "phase_end": 0.5}, "phase_end=0.5 is out of range; allowed: >= phase_start=0.8"),
        ("distribution_balanced", {"neg_scale": 0.0}, "neg_scale=0 is out of range"),
        ("distribution_balanced", {"num_samples": 8}, "num_samples=8"),
        ("ot_reweight", {"eps": 0.0}, "eps=0 is out of range"),
        ("ot_reweight", {"meta_per_class": 0}, "meta_per_class=0 is out of range"),
        ("ot_reweight", {"meta_per_class": 2.5}, "meta_per_class=2.5 must be an integer"),
        ("tally_proto", {"momentum": 1.0}, r"momentum=1 is out of range; allowed: a number in \[0, 1\)"),
        ("autobalance", {"neumann_lr": 0.0}, "neumann_lr=0 is out of range"),
        ("autobalance", {"start_epoch": -1}, "start_epoch=-1 is out of range"),
        ("rescom", {"temperature": 0.0}, "temperature=0 is out of range"),
        ("rescom", {"queue_per_class": 2, "hard_positives": 3}, "hard_positives=3 is out of range; allowed: <= queue_per_class=2"),
    ],
)
def test_bad_parameters_raise_naming_the_parameter(name, params, match):
    with pytest.raises(ValueError, match=match):
        losses.build(name, COUNTS, **params)


def test_ot_reweight_without_features_says_what_it_needs():
    with pytest.raises(ValueError, match="ot_reweight needs features="):
        losses.build("ot_reweight", COUNTS)(_t(LOGITS), _y())


def test_ot_reweight_weights_minimise_the_entropic_ot_distance():
    """The closed-form w is Sinkhorn's plan for (w, q) (checked with POT) and no nearby w does better."""
    ot = pytest.importorskip("ot", reason="the reference Sinkhorn solver comes from POT: pip install pot (in the dev extra)")
    gen = torch.Generator().manual_seed(3)
    features, targets = torch.randn(6, 4, generator=gen), torch.tensor([0, 0, 0, 0, 1, 2])
    meta_f, meta_y = torch.randn(6, 4, generator=gen), torch.tensor([0, 0, 1, 1, 2, 2])
    eps = 0.5
    loss = losses.build("ot_reweight", COUNTS, eps=eps)
    loss.set_meta(meta_f, meta_y)
    w = loss.batch_weights(features, targets).double().numpy()
    assert w.sum() == pytest.approx(1.0, abs=1e-6)
    w = w / w.sum()  # exactly 1 in float64, or Sinkhorn cannot meet both marginals
    f = torch.nn.functional.normalize(features, dim=1).double().numpy()
    g = torch.nn.functional.normalize(meta_f, dim=1).double().numpy()
    cost = 1 - f @ g.T + (targets.numpy()[:, None] != meta_y.numpy()[None, :])
    q = np.full(6, 1 / 6)

    def entropic_ot(a):
        plan = ot.sinkhorn(a, q, cost, eps, numItermax=100000, stopThr=1e-10)
        return float((plan * cost).sum() + eps * (plan * (np.log(plan + 1e-300) - 1)).sum()), plan

    best, plan = entropic_ot(w)
    np.testing.assert_allclose(plan, q[None, :] * np.exp(-cost / eps) / np.exp(-cost / eps).sum(0), atol=1e-8)
    rng = np.random.default_rng(0)
    for _ in range(5):
        other = np.clip(w + 0.02 * rng.standard_normal(6), 1e-3, None)
        assert entropic_ot(other / other.sum())[0] > best


@pytest.mark.parametrize("name", [n for n in losses.available() if eager_reason(preset("digits-quick", loss=n)) is None])
def test_graph_step_matches_eager_for_capturable_losses(name):
    cfg = dict(epochs=2, imbalance=10, lr=0.02, loss=name)
    eager = train(preset("digits-quick", engine="eager", **cfg), save=False)
    fast = train(preset("digits-quick", engine="graph", **cfg), save=False)
    assert [h["loss"] for h in fast.history] == pytest.approx([h["loss"] for h in eager.history], rel=2e-3)
