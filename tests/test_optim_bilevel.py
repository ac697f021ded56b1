"""SAM, ABSGD, AutoBalance and ResCom: their formulas on hand cases, and short runs through the loop."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ltlib import losses, optim, plots
from ltlib.autobalance import implicit_hypergradient, top_hessian_eigenvalue
from ltlib.cli import main
from ltlib.contrastive import ResCom, supcon_per_sample
from ltlib.models import build_model
from ltlib.presets import preset
from ltlib.runs import list_runs, load_run
from ltlib.train import batch_loss, optimizer_step, train, with_validation_split

A = torch.tensor([[1.0, 0.2, 0.0], [0.2, 0.8, 0.1], [0.0, 0.1, 0.5]])


def quadratic_step(opt: torch.optim.Optimizer, w: torch.nn.Parameter) -> torch.Tensor:
    return optimizer_step(opt, lambda: 0.5 * w @ A @ w)


# ----------------------------------------------------------------------------- SAM


def test_sam_step_equals_the_formula():
    w0 = torch.tensor([1.0, -2.0, 0.5])
    w = torch.nn.Parameter(w0.clone())
    lr, rho, wd = 0.1, 0.3, 0.01
    opt = optim.build("sam", [w], lr, 0.0, wd, False, rho=rho)
    loss = quadratic_step(opt, w)
    g = A @ w0
    eps = rho * g / g.norm()
    expected = w0 - lr * (A @ (w0 + eps) + wd * w0)  # gradient at w + ε, decay at w
    assert torch.allclose(w.detach(), expected, atol=1e-6)
    assert float(loss.detach()) == pytest.approx(float(0.5 * w0 @ A @ w0))  # the loss reported is the one at w


def test_sam_is_plain_sgd_before_its_start_epoch():
    w0 = torch.tensor([1.0, -2.0, 0.5])
    w = torch.nn.Parameter(w0.clone())
    opt = optim.build("sam", [w], 0.1, 0.0, 0.0, False, rho=0.3, start_epoch=2)
    state = SimpleNamespace(rebuild=False)
    opt.on_epoch_start(1, state)
    quadratic_step(opt, w)
    assert torch.allclose(w.detach(), w0 - 0.1 * (A @ w0), atol=1e-6) and not state.rebuild
    opt.on_epoch_start(2, state)
    assert state.rebuild  # the step gains its second pass: the graph engine captures anew
    w1 = w.detach().clone()
    quadratic_step(opt, w)
    assert not torch.allclose(w.detach(), w1 - 0.1 * (A @ w1), atol=1e-6)


def test_sam_bad_parameters_and_missing_closure():
    w = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="rho=-1"):
        optim.build("sam", [w], 0.1, 0.9, 0.0, False, rho=-1)
    with pytest.raises(ValueError, match="closure"):
        optim.build("sam", [w], 0.1, 0.9, 0.0, False).step()


# ----------------------------------------------------------------------------- ABSGD


def absgd(**kw) -> optim.ABSGD:
    return optim.build("absgd", [torch.nn.Parameter(torch.zeros(1))], 0.1, 0.9, 0.0, False, start_epoch=0, **kw)


def test_absgd_weights_are_the_batch_softmax_of_losses_over_lambda():
    # γ = α = 1: u = mean exp(ℓ/λ), so p_i = exp(ℓ_i/λ) / Σ_j exp(ℓ_j/λ), the paper's weights.
    values = torch.tensor([1.0, 2.0, 3.0])
    e = [math.exp(1 / 2), math.exp(2 / 2), math.exp(3 / 2)]
    expected = sum(ei / sum(e) * li for ei, li in zip(e, [1.0, 2.0, 3.0]))
    assert float(absgd(lam=2.0, gamma=1.0, alpha=1.0).attention(values)) == pytest.approx(expected)


def test_absgd_moving_average_normaliser():
    opt = absgd(lam=1.0, gamma=0.5, alpha=0.5)
    first, second = torch.tensor([0.0, 1.0]), torch.tensor([2.0, 0.0])
    u1 = 0.5 * 0.5 * (1 + math.e) / 2  # u starts at 0
    assert float(opt.attention(first)) == pytest.approx(math.e / (u1 * 2) * 1.0)
    u2 = 0.5 * u1 + 0.5 * 0.5 * (math.e**2 + 1) / 2
    assert float(opt.attention(second)) == pytest.approx(math.e**2 / (u2 * 2) * 2.0)


def official_absgd(batches, lam=5.0, gamma=0.7, alpha=0.5):
    """The official update (qiqi-helloworld/ABSGD, mylosses.py, class ABSGD) in float64 scalars: u, p, Σ p ℓ."""
    u, out = 0.0, []
    for losses_ in batches:
        e = [math.exp(v / lam) for v in losses_]
        u = (1 - gamma) * u + gamma * (alpha * sum(e) / len(e))
        p = [ei / (u * len(losses_)) for ei in e]
        out.append((u, p, sum(pi * v for pi, v in zip(p, losses_))))
    return out


def test_absgd_matches_the_official_update_at_the_default_hyper_parameters():
    batches = [[0.5, 2.0, 4.0], [1.0, 3.0, 0.0], [6.0, 0.2, 1.5]]
    # Step 1 by hand (λ = 5, γ = 0.7, α = 0.5, u₀ = 0): u = 0.35·mean(e^0.1, e^0.4, e^0.8) = 0.562629,
    # p = e^(ℓ/5)/(3u) = (0.654766, 0.883841, 1.318536), Σ p ℓ = 7.369209.
    assert official_absgd(batches)[0][2] == pytest.approx(7.369209, abs=1e-6)
    opt = absgd()  # the defaults
    for losses_, (u, p, objective) in zip(batches, official_absgd(batches)):
        values = torch.tensor(losses_, requires_grad=True)
        got = opt.attention(values)
        got.backward()
        assert float(got.detach()) == pytest.approx(objective, rel=1e-5)
        assert opt.u == pytest.approx(u, rel=1e-5)
        # p is detached: d(Σ p ℓ)/dℓ_i = p_i.
        assert values.grad.tolist() == pytest.approx(p, rel=1e-5)


def test_absgd_weights_stay_finite_for_large_losses():
    # exp(500/5) = e^100 overflows float32 (max ≈ e^88.7): the official code's u would be inf and
    # p = inf/inf = NaN. Here p is the same as the float64 reference, and finite.
    batches = [[500.0, 1.0, 2.0], [200.0, 450.0, 0.5], [1.0, 2.0, 3.0]]
    opt = absgd()
    for losses_, (u, p, objective) in zip(batches, official_absgd(batches)):
        values = torch.tensor(losses_, requires_grad=True)
        got = opt.attention(values)
        got.backward()
        assert math.isfinite(float(got.detach())) and torch.isfinite(values.grad).all()
        assert float(got.detach()) == pytest.approx(objective, rel=1e-5)
        assert values.grad.tolist() == pytest.approx(p, rel=1e-5, abs=1e-30)
        assert max(values.grad.tolist()) <= 1 / (0.7 * 0.5) + 1e-6  # no weight exceeds 1/(γα)
        assert opt.u == pytest.approx(u, rel=1e-5)  # ≈ 1e42: beyond float32, kept as log u
    # λ < 0 (label noise) with large losses: the weights vanish without dividing 0 by 0.
    noisy = absgd(lam=-1.0, gamma=1.0, alpha=1.0)
    values = torch.tensor([200.0, 300.0])
    # (float32 ℓ/λ = −200 is known to ~1e-5 absolute, so p to ~1e-5 relative)
    expected = 200.0 / (1 + math.exp(-100.0)) + 300.0 / (1 + math.exp(100.0))
    assert float(noisy.attention(values)) == pytest.approx(expected, rel=1e-4)


def test_absgd_negative_lambda_discounts_hard_samples_and_zero_is_rejected():
    values = torch.tensor([1.0, 3.0])
    e = [math.exp(-1.0), math.exp(-3.0)]
    assert float(absgd(lam=-1.0, gamma=1.0, alpha=1.0).attention(values)) == pytest.approx((e[0] * 1 + e[1] * 3) / sum(e))
    with pytest.raises(ValueError, match="lam=0"):
        absgd(lam=0.0)


def test_absgd_is_the_plain_mean_before_its_start_epoch():
    opt = optim.build("absgd", [torch.nn.Parameter(torch.zeros(1))], 0.1, 0.9, 0.0, False)
    state = SimpleNamespace(cfg=SimpleNamespace(epochs=10), rebuild=False)
    opt.on_epoch_start(7, state)  # default start: 0.8 · 10 epochs
    assert opt.objective is None  # the plain batch mean
    opt.on_epoch_start(8, state)
    assert float(opt.objective(torch.tensor([1.0, 3.0]))) > 2.0


def test_batch_loss_hands_per_sample_values_to_reduce():
    torch.manual_seed(0)
    model = build_model("mlp", (8,), 3)
    loss_fn = losses.build("focal", [5, 3, 1])
    x, y = torch.randn(6, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    values = loss_fn(model.head(model.features(x)), y, reduction="none")
    got = batch_loss(model, loss_fn, x, y, None, None, False, reduce=lambda v: (v * torch.arange(6.0)).sum())
    assert torch.allclose(got, (values * torch.arange(6.0)).sum())


# ----------------------------------------------------------------------------- AutoBalance


def test_autobalance_adjusted_loss_hand_case():
    loss_fn = losses.build("autobalance", [10, 5, 1])
    logits, y = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]]), torch.tensor([1, 2])
    dy, ly, wy = torch.zeros(3), torch.tensor([0.1, 0.0, -0.1]), torch.tensor([1.0, 1.0, 3.0])
    # σ(0) = 0.5: z' = 0.5 z + ι
    l0 = -math.log(math.exp(1.0) / (math.exp(0.6) + math.exp(1.0) + math.exp(-0.1)))
    l1 = -math.log(math.exp(1.4) / (math.exp(0.1) + math.exp(0.0) + math.exp(1.4)))
    got = loss_fn.adjusted_loss(logits, y, dy, ly, wy)
    assert got.tolist() == pytest.approx([1.0 / 2.0 * l0, 3.0 / 2.0 * l1], rel=1e-5)  # ω_y / mean ω
    assert float(got.mean()) == pytest.approx((l0 + 3 * l1) / 4, rel=1e-5)  # Σ ω ℓ / Σ ω
    # Initialisation Δ = 1, ι = 0, ω = 1: CE of σ(1)·z.
    plain = F.cross_entropy(logits * torch.sigmoid(torch.tensor(1.0)), y)
    assert float(loss_fn(logits, y)) == pytest.approx(float(plain), rel=1e-6)


def test_implicit_hypergradient_equals_the_exact_one_on_a_quadratic():
    # L_train = ½ wᵀAw − λᵀBw, L_val = ½‖w − c‖²: dL_val/dλ = −(∂λ ∇w L_train)ᵀ H⁻¹ ∇w L_val = B A⁻¹ (w − c).
    B = torch.tensor([[1.0, 0.0, 2.0], [0.5, -1.0, 0.0]])
    c = torch.tensor([0.3, -0.2, 1.0])
    w = torch.tensor([1.0, 2.0, -1.0], requires_grad=True)
    lam = torch.tensor([0.2, -0.4], requires_grad=True)
    train_grads = list(torch.autograd.grad(0.5 * w @ A @ w - lam @ (B @ w), [w], create_graph=True))
    val_grads = [(w - c).detach()]
    exact = B @ torch.linalg.solve(A, w.detach() - c)
    (many,) = implicit_hypergradient(train_grads, [w], [lam], val_grads, terms=200, lr=1.0)
    assert torch.allclose(many, exact, atol=1e-5)
    (none,) = implicit_hypergradient(train_grads, [w], [lam], val_grads, terms=0, lr=0.5)
    assert torch.allclose(none, 0.5 * B @ (w.detach() - c), atol=1e-6)  # zero Neumann terms: H⁻¹ ≈ α I


def test_power_iteration_finds_the_top_hessian_eigenvalue():
    w = torch.tensor([1.0, 2.0, -1.0], requires_grad=True)
    grads = list(torch.autograd.grad(0.5 * w @ A @ w, [w], create_graph=True))
    top = float(torch.linalg.eigvalsh(A).max())
    assert top_hessian_eigenvalue(grads, [w], [torch.tensor([1.0, 1.0, 1.0])], iters=50) == pytest.approx(top, rel=1e-4)


def test_autobalance_gets_a_default_validation_split():
    cfg, note = with_validation_split(preset("digits-quick", loss="autobalance"))
    assert cfg.val_fraction == 0.2 and "val_fraction=0.2" in note
    assert with_validation_split(preset("digits-quick", loss="autobalance", val_fraction=0.1))[0].val_fraction == 0.1
    assert with_validation_split(preset("digits-quick"))[0].val_fraction == 0.0


def test_autobalance_learns_and_logs_per_class_parameters():
    result = train(preset("digits-quick", epochs=2, loss="autobalance", loss_params={"start_epoch": 0, "learn_weights": True}), save=False)
    logs = [h["autobalance"] for h in result.history]
    assert all(len(log[k]) == 10 for log in logs for k in ("scale", "shift", "weight"))
    assert any(abs(v) > 0 for v in logs[-1]["shift"])  # ι moved away from its zero start
    assert any(abs(v - 1) > 0 for v in logs[-1]["weight"])
    with pytest.raises(ValueError, match="at least one"):
        losses.build("autobalance", [3, 1], learn_scale=False, learn_shift=False)


# ----------------------------------------------------------------------------- ResCom


def test_supcon_hand_case_against_the_batch_and_the_queue():
    loss_fn = ResCom([5, 5], temperature=1.0, queue_per_class=1, hard_positives=1, hard_negatives=1, dim=2)
    loss_fn.queue.copy_(torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]]))
    q, y = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), torch.tensor([0, 1, 0])
    e = math.e
    # anchor 0: candidates (q1, q2, key0, key1) with similarities (0, 1, 1, 0), positives q2 and key0.
    same = math.log((2 + 2 * e) / e)
    # anchor 1: no positive in the batch; the queue's key1 (similarity 1) is its positive.
    alone = math.log((3 + e) / e)
    assert loss_fn.contrastive(q, y).tolist() == pytest.approx([same, alone, same], rel=1e-6)


def test_hard_mining_keeps_the_least_similar_positive_and_most_similar_negatives():
    loss_fn = ResCom([5, 5], temperature=0.5, queue_per_class=3, hard_positives=1, hard_negatives=2, dim=2)
    angles = torch.tensor([[0.1, 1.2, 0.6], [0.3, 1.5, 0.9]])
    loss_fn.queue.copy_(torch.stack([angles.cos(), angles.sin()], dim=2))
    q, y = torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([0, 0])
    sims = loss_fn.queue @ torch.tensor([1.0, 0.0])
    logits = torch.tensor([1.0, sims[0].min(), *sims[1].sort(descending=True).values[:2]]) / 0.5
    expected = supcon_per_sample(logits[None], torch.tensor([[1.0, 1.0, 0.0, 0.0]]))
    assert torch.allclose(loss_fn.contrastive(q, y), expected.expand(2), atol=1e-6)


def test_rescom_class_weights_and_queue_ring():
    loss_fn = ResCom([100, 1], queue_per_class=2, dim=2)
    effective = np.array([(1 - 0.999999**100) / (1 - 0.999999), 1.0])
    assert loss_fn.contrast_weight.tolist() == pytest.approx((effective.mean() / effective).tolist(), rel=1e-5)
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    loss_fn.enqueue(keys, torch.tensor([0, 0, 0]))  # k1 → slot 0, k2 → slot 1, k3 overwrites slot 0
    assert torch.allclose(loss_fn.queue[0], torch.tensor([[0.6, 0.8], [0.0, 1.0]]))
    assert loss_fn.queue_ptr.tolist() == [1, 0]


def test_rescom_total_loss_is_balanced_softmax_plus_weighted_supcon():
    torch.manual_seed(0)
    loss_fn = ResCom([4, 2, 1], weight=0.5)
    model = build_model("mlp", (8,), 3)
    loss_fn.attach(model)
    feats = torch.randn(5, model.feature_dim)
    logits, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1])
    queue = loss_fn.queue.clone()
    q = F.normalize(loss_fn.projection(feats), dim=1)
    loss_fn.queue.copy_(queue)
    con = loss_fn.contrastive(q, y)
    bal = F.cross_entropy(logits + torch.log(torch.tensor([4.0, 2.0, 1.0]) / 7), y, reduction="none")
    expected = bal + 0.5 * loss_fn.contrast_weight[y] * con
    assert torch.allclose(loss_fn(logits, y, reduction="none", features=feats), expected, atol=1e-5)
    assert loss_fn.queue_ptr.tolist() == [2, 2, 1]  # the batch was enqueued


# ----------------------------------------------------------------------------- through the loop


@pytest.mark.parametrize(
    "overrides",
    [
        {"optimizer": "sam", "optimizer_params": {"rho": 0.1}},
        {"optimizer": "absgd", "optimizer_params": {"start_epoch": 0}},
        {"loss": "autobalance", "loss_params": {"start_epoch": 0}},
        {"loss": "rescom"},
        {"loss": "ldam", "schedule": "drw", "schedule_params": {"start_epoch": 1}, "optimizer": "sam", "optimizer_params": {"rho": 0.8}},
    ],
    ids=["sam", "absgd", "autobalance", "rescom", "ldam-drw-sam"],
)
def test_each_method_trains_two_epochs(overrides):  # which engine each claims: tests/test_conformance.py
    cfg = preset("digits-quick", epochs=2, **overrides)
    result = train(cfg, save=False)
    assert len(result.history) == 2 and all(math.isfinite(h["loss"]) for h in result.history)
    assert 0.0 <= result.eval["balanced_accuracy"] <= 1.0


def test_rescom_projection_head_is_trained():
    torch.manual_seed(0)
    result = train(preset("digits-quick", epochs=1, loss="rescom"), save=False)
    assert result.eval["balanced_accuracy"] > 0  # runs; the head's weights are in the optimiser:
    loss_fn = losses.build("rescom", [3, 2, 1])
    model = build_model("mlp", (8,), 3)
    loss_fn.attach(model)
    before = [p.detach().clone() for p in loss_fn.projection.parameters()]
    opt = optim.build("sgd", [*model.parameters(), *loss_fn.parameters()], 0.1, 0.0, 0.0, False)
    x, y = torch.randn(6, 8), torch.tensor([0, 1, 2, 0, 1, 0])
    optimizer_step(opt, lambda: batch_loss(model, loss_fn, x, y, None, None, False))
    assert any(not torch.equal(a, b) for a, b in zip(before, loss_fn.projection.parameters()))


def test_cli_selects_the_optimiser_and_its_parameters():
    assert (
        main(["train", "--preset", "digits-quick", "--epochs", "1", "--optimizer", "sam", "--optimizer-param", "rho=0.2", "--quiet"]) == 0
    )
    (run,) = list_runs()
    assert run.config["optimizer"] == "sam" and run.config["optimizer_params"] == {"rho": 0.2}
    assert main(["train", "--preset", "digits-quick", "--epochs", "1", "--loss", "autobalance", "--quiet"]) == 0
    auto = next(r for r in list_runs() if r.config["loss"] == "autobalance")
    assert auto.config["val_fraction"] == 0.2 and auto.meta["n_val"] > 0 and "val_fraction=0.2" in auto.meta["val_note"]
    ldam = ["--loss", "ldam", "--schedule", "drw", "--optimizer", "sam", "--quiet"]
    assert main(["train", "--preset", "digits-quick", "--epochs", "2", *ldam]) == 0
    run = next(r for r in list_runs() if r.config["loss"] == "ldam")
    assert run.config["schedule"] == "drw" and run.config["optimizer"] == "sam" and run.meta["engine"] == "eager"


def test_learned_per_class_figure_from_a_saved_autobalance_run():
    result = train(preset("digits-quick", epochs=2, loss="autobalance", loss_params={"start_epoch": 0}))
    run = load_run(result.run_id)
    fig = plots.learned_per_class(run)
    assert len(fig.data) == 3 * 10  # σ(Δ), ι, ω for each of the 10 classes
    assert list(fig.data[10].y) == [h["autobalance"]["shift"][0] for h in run.history]
    with pytest.raises(ValueError, match="logged no per-class values under 'nope'"):
        plots.learned_per_class(run, key="nope")
