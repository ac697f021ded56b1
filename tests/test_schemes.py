"""Training schemes: decoupled two-stage schedules (cRT, LWS, MARC), BalPoE, BBN, compound batch norm."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ltlib import samplers, schedules
from ltlib.models import build_model
from ltlib.presets import preset
from ltlib.train import train


def quick(**kw):
    return preset("digits-quick", **{"epochs": 4, **kw})


def stage1_snapshot(monkeypatch, cls):
    """Record the model's state when stage 2 starts (the backbone is frozen, nothing trained yet)."""
    snap: dict[str, torch.Tensor] = {}
    original = cls.stage2_parameters

    def spy(self, model):
        snap.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return original(self, model)

    monkeypatch.setattr(cls, "stage2_parameters", spy)
    return snap


def test_crt_freezes_backbone_and_its_batchnorm_statistics(monkeypatch):
    snap = stage1_snapshot(monkeypatch, schedules.ClassifierRetraining)
    result = train(quick(model="cnn", schedule="crt", schedule_params={"start_epoch": 2}), save=False)
    after = result.model.state_dict()
    backbone = [k for k in snap if k.startswith("backbone.")]
    assert any("running_mean" in k for k in backbone) and any("num_batches_tracked" in k for k in backbone)
    for k in backbone:
        assert torch.equal(after[k], snap[k]), k
    assert not torch.equal(after["head.weight"], snap["head.weight"])  # re-initialised and re-trained
    assert [h.get("stage") for h in result.history] == [None, None, 2, 2]
    # Stage 2 restarts a cosine lr at the base lr: 0.05 then 0.05·(1 + cos(π/2))/2.
    assert [h["lr"] for h in result.history[2:]] == pytest.approx([0.05, 0.025])


def test_crt_can_leave_batchnorm_statistics_adapting_as_the_official_code_does(monkeypatch):
    snap = stage1_snapshot(monkeypatch, schedules.ClassifierRetraining)
    cfg = quick(model="cnn", schedule="crt", schedule_params={"start_epoch": 2, "freeze_norm_stats": False})
    after = train(cfg, save=False).model.state_dict()
    assert torch.equal(after["backbone.0.weight"], snap["backbone.0.weight"])
    assert not torch.equal(after["backbone.1.running_mean"], snap["backbone.1.running_mean"])


@pytest.mark.parametrize(
    "name, cls, trained",
    [
        ("lws", schedules.LearnableWeightScaling, {"head.scales"}),
        ("marc", schedules.MarginCalibration, {"head.omega", "head.beta"}),
    ],
)
def test_lws_and_marc_train_only_their_calibration_parameters(monkeypatch, name, cls, trained):
    snap = stage1_snapshot(monkeypatch, cls)
    result = train(quick(model="cnn", schedule=name, schedule_params={"start_epoch": 2}), save=False)
    after = result.model.state_dict()
    for k, v in snap.items():
        k2 = k.replace("head.", "head.inner.")
        assert torch.equal(after[k2 if k.startswith("head.") else k], v), k
    changed = {k for k in after if k not in snap and not k.startswith("head.inner.")}
    assert changed == trained
    start = {"head.scales": 1.0, "head.omega": 1.0, "head.beta": 0.0}
    for k in trained:
        assert not torch.allclose(after[k], torch.full_like(after[k], start[k])), k


def test_marc_logits_follow_the_formula():
    head = torch.nn.Linear(3, 2)
    marc = schedules.MarginCalibratedHead(head, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 2.0]]))
        head.bias.zero_()
        marc.omega.copy_(torch.tensor([2.0, 0.5]))
        marc.beta.copy_(torch.tensor([1.0, -1.0]))
    f = torch.tensor([[1.0, 1.0, 1.0]])
    # z = (7, 2); z' = (2·7 + 1·5, 0.5·2 − 1·2)
    assert marc(f).tolist() == [[19.0, -1.0]]
    assert torch.allclose(f @ marc.weight.T + marc.bias, marc(f))  # the effective linear classifier
    lws = schedules.ScaledHead(head, 2)
    with torch.no_grad():
        lws.scales.copy_(torch.tensor([2.0, 3.0]))
    assert lws(f).tolist() == [[14.0, 6.0]]
    assert lws.weight[1].tolist() == [0.0, 0.0, 6.0]
    with torch.no_grad():
        head.bias.copy_(torch.tensor([1.0, -1.0]))
    assert torch.allclose(f @ lws.weight.T + lws.bias, lws(f)) and lws(f).tolist() == [[16.0, 3.0]]


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(start_epoch=4), r"start_epoch=4 is out of range; allowed: \[1, 3\]"),
        (dict(start_epoch=0), r"schedule 'crt': start_epoch=0 is out of range; allowed: an integer in \[1, inf\)"),
    ],
)
def test_two_stage_rejects_bad_start(kw, match):
    with pytest.raises(ValueError, match=match):
        schedules.build("crt", 4, **kw)


def test_drw_rejects_bad_parameters_by_name():
    with pytest.raises(ValueError, match=r"schedule 'drw': beta=1 is out of range; allowed: a number in \[0, 1\)"):
        schedules.build("drw", 4, beta=1.0)
    with pytest.raises(ValueError, match="schedule 'drw': start_epoch=-1 is out of range"):
        schedules.build("drw", 4, start_epoch=-1)


def test_two_stage_switches_to_a_class_balanced_sampler_without_the_runs_parameters():
    """Stage 2 samples class-balanced with no parameters, whatever sampler (and parameters) stage 1 used."""
    counts = np.array([30, 10, 2])
    model = build_model("mlp", (4,), 3)
    state = SimpleNamespace(
        cfg=SimpleNamespace(lr=0.1),
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        class_counts=counts,
        sampler=samplers.build("power", counts, 4, q=0.5),
        class_probs=None,
        log={},
    )
    schedule = schedules.build("crt", 4, start_epoch=2)
    assert {"epoch hook", "changes model"} <= schedule.traits and not hasattr(schedule, "changes_model")
    schedule.on_epoch_start(1, state)
    assert state.sampler.name == "power" and state.class_probs is None  # stage 1: untouched
    for epoch in (2, 3):
        schedule.on_epoch_start(epoch, state)
        assert isinstance(state.sampler, samplers.Sampler)
        assert state.sampler.name == "class_balanced" and state.sampler.params == {} and not state.sampler.instance
        np.testing.assert_allclose(state.class_probs, np.full(3, 1 / 3))
        np.testing.assert_allclose(state.sampler.probabilities(epoch), state.class_probs)
        assert state.log["stage"] == 2


def test_two_stage_schedules_run_on_the_graph_and_ask_for_a_fresh_runner_at_the_switch():
    from ltlib.families import eager_reason
    from ltlib.schedules import build

    assert eager_reason(quick(schedule="lws")) is None and eager_reason(quick(schedule="drw")) is None
    result = train(quick(schedule="crt", engine="graph", device="cpu"), save=False)
    assert [h.get("stage") for h in result.history] == [None, None, None, 2]
    assert not any(p.requires_grad for p in result.model.backbone.parameters())
    hook = build("crt", 4)
    state = SimpleNamespace(rebuild=False, epoch=0)
    hook.on_epoch_start(2, state)  # stage 1: nothing changes
    assert not state.rebuild


def test_balpoe_loss_is_the_mean_of_logit_adjusted_expert_losses():
    from ltlib.losses import build

    counts = [6, 3, 1]
    loss = build("balpoe", counts)  # λ = (1, 0, −1): biases 0, log π, 2·log π
    log_pi = torch.log(torch.tensor([0.6, 0.3, 0.1]))
    z = torch.zeros(1, 3, 3)
    # Expert 0: CE(0) = log 3; expert 1: −log softmax(log π)_y = −log π_y; expert 2: −log(π_y² / Σ π²).
    y = 2
    expected = (torch.log(torch.tensor(3.0)) - log_pi[y] - (2 * log_pi[y] - torch.logsumexp(2 * log_pi, 0))) / 3
    assert loss(z, torch.tensor([y])).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("lambdas, target_exponent", [((1.0, 0.0, -1.0), 0.0), ((1.0, 0.0), 0.5), ((1.0,), 1.0)])
def test_balpoe_combined_bias_targets_the_prior_power_mean_lambda(lambdas, target_exponent):
    """Trained on labels drawn from π with no input signal, expert k's optimum is z_k = λ_k·log π + c:
    the gradient of the expected loss vanishes there, and the experts' mean is λ̄·log π (balanced for λ̄ = 0)."""
    from ltlib.losses import build
    from ltlib.models import ExpertsHead

    counts = torch.tensor([6.0, 3.0, 1.0])
    log_pi = torch.log(counts / counts.sum())
    loss = build("balpoe", counts.numpy(), lambdas=lambdas)
    z = torch.stack([lam * log_pi for lam in lambdas]).requires_grad_(True)  # (K, C), one input
    per_label = loss(z[None].expand(3, -1, -1), torch.arange(3), reduction="none")  # sample i has label i
    (per_label * counts / counts.sum()).sum().backward()  # expectation over y ~ π
    assert z.grad.abs().max().item() < 1e-6
    head = ExpertsHead(4, 3, num_experts=len(lambdas)).eval()
    combined = z.detach().mean(0)
    assert torch.allclose(combined - combined.mean(), target_exponent * (log_pi - log_pi.mean()), atol=1e-6)
    assert head(torch.randn(5, 4)).shape == (5, 3) and head.train()(torch.randn(5, 4)).shape == (5, len(lambdas), 3)


def test_balpoe_saves_expert_logits_and_their_per_class_accuracy(isolated_home):
    from ltlib.metrics import expert_per_class_accuracy, per_class_accuracy
    from ltlib.runs import load_run

    result = train(quick(loss="balpoe", mixing="mixup", epochs=2))
    arrays = load_run(result.run_id).arrays
    experts, labels = arrays["test_expert_logits"], arrays["test_labels"]
    assert experts.shape == (3, len(labels), 10)
    assert arrays["test_logits"] == pytest.approx(experts.mean(0), abs=1e-4)
    acc = expert_per_class_accuracy(experts, labels)
    assert acc.shape == (3, 10)
    assert acc[1] == pytest.approx(per_class_accuracy(experts[1].argmax(1), labels, 10), nan_ok=True)
    from ltlib import plots

    fig = plots.expert_accuracy(load_run(result.run_id))
    assert [t.name for t in fig.data] == ["expert 1 (λ = 1)", "expert 2 (λ = 0)", "expert 3 (λ = -1)", "product of experts"]
    order = np.argsort(-arrays["class_counts"], kind="stable")
    assert list(fig.data[2].y) == pytest.approx(list(acc[2][order]))


def test_balpoe_rejects_plain_logits():
    from ltlib.losses import build

    with pytest.raises(ValueError, match="experts head"):
        build("balpoe", [3, 2])(torch.zeros(2, 2), torch.tensor([0, 1]))


def test_bbn_cumulative_alpha_is_one_minus_squared_progress():
    from ltlib.models import cumulative_alpha

    assert [cumulative_alpha(t, 10) for t in (0, 5, 9)] == pytest.approx([1.0, 0.75, 0.19])


def test_bbn_backbone_mixes_branches_with_alpha_in_training_and_halves_at_test():
    from ltlib.models import BilateralBackbone

    conventional, rebalancing = torch.nn.Linear(2, 1, bias=False), torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        conventional.weight.copy_(torch.tensor([[1.0, 0.0]]))
        rebalancing.weight.copy_(torch.tensor([[0.0, 1.0]]))
    net = BilateralBackbone(torch.nn.Identity(), conventional, rebalancing, input_ndim=1)
    net.alpha = 0.75
    pair = torch.tensor([[[2.0, 3.0], [5.0, 7.0]]])  # (B=1, 2, D=2): conventional input, re-balancing input
    assert net(pair).tolist() == [[2 * 0.75 * 2.0, 2 * 0.25 * 7.0]]
    with pytest.raises(ValueError, match="--mixing bbn"):
        net(pair[:, 0])
    net.eval()
    assert net(torch.tensor([[2.0, 3.0]])).tolist() == [[2.0, 3.0]]  # 2·(½·f_c, ½·f_r)


def test_bbn_mixing_pairs_the_batch_with_a_reversed_sampler_batch():
    from ltlib import mixing, samplers
    from ltlib.models import build_model

    counts = [90, 10]
    labels = torch.tensor([0] * 90 + [1] * 10)
    g = torch.Generator().manual_seed(0)

    def draw_batch(p, n):
        idx = samplers.draw_indices(labels, p, n, g)
        return labels[idx].float()[:, None].repeat(1, 4), labels[idx]

    model = build_model("bbn", (4,), 2)
    ctx = mixing.MixContext(counts, g, epoch=3, epochs=10, draw_batch=draw_batch, model=model)
    x, y = torch.zeros(2000, 4), torch.zeros(2000, dtype=torch.long)
    xp, y_a, y_b, lam = mixing.build("bbn", counts)(x, y, ctx)
    assert xp.shape == (2000, 2, 4) and torch.equal(xp[:, 0], x) and torch.equal(y_a, y)
    assert y_b.float().mean().item() == pytest.approx(0.9, abs=0.03)  # p ∝ 1/n: (1/10) / (1/90 + 1/10)
    assert torch.allclose(lam, torch.full((2000,), 1 - 0.3**2))
    ctx.model = build_model("mlp", (4,), 2)
    with pytest.raises(ValueError, match="--model bbn"):
        mixing.build("bbn", counts)(x, y, ctx)


def test_compound_bn_with_one_component_is_batch_norm():
    from ltlib.models import CompoundBatchNorm

    x = torch.randn(16, 4, 5, 5, generator=torch.Generator().manual_seed(0)) * 3 + 1
    bn, cbn = torch.nn.BatchNorm2d(4), CompoundBatchNorm(4, components=1)
    assert torch.allclose(cbn(x), bn(x), atol=1e-5)
    # Its running mean starts at the first batch's mean (batch norm's starts at 0 and moves 10 % of the way).
    assert torch.allclose(cbn.running_means[0], x.mean((0, 2, 3)), atol=1e-5)


def test_compound_bn_em_recovers_two_clusters():
    """Features from two Gaussian clusters (64 at (−3, 1), 32 at (3, −1), std 0.5): moving-average EM
    finds both means, their variances 0.25 and the mixture weights ⅔ / ⅓."""
    from ltlib.models import CompoundBatchNorm

    cbn = CompoundBatchNorm(2, components=2, momentum=0.5)
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        a = torch.randn(64, 2, generator=g) * 0.5 + torch.tensor([-3.0, 1.0])
        b = torch.randn(32, 2, generator=g) * 0.5 + torch.tensor([3.0, -1.0])
        cbn(torch.cat([a, b]))
    order = cbn.running_means[:, 0].argsort()
    assert cbn.running_means[order].tolist() == [pytest.approx([-3.0, 1.0], abs=0.1), pytest.approx([3.0, -1.0], abs=0.1)]
    assert cbn.running_vars.flatten().tolist() == pytest.approx([0.25] * 4, abs=0.08)
    assert cbn.running_priors[order].tolist() == pytest.approx([2 / 3, 1 / 3], abs=1e-3)
    # At test each point is normalised by its own cluster: the cluster centres map to ≈ 0.
    cbn.eval()
    assert cbn(torch.tensor([[-3.0, 1.0], [3.0, -1.0]])).abs().max().item() < 0.3


@pytest.mark.parametrize(
    "kw",
    [
        dict(schedule="crt"),
        dict(schedule="lws"),
        dict(schedule="marc"),
        dict(loss="balpoe", mixing="mixup"),
        dict(model="bbn", mixing="bbn"),
        dict(model="bbn", mixing="bbn", model_params={"backbone": "resnet8"}),
        dict(model="cnn", norm="compound_bn"),
        dict(model="resnet8", norm="compound_bn", norm_params={"components": 2}),
    ],
)
def test_each_scheme_trains_two_epochs_of_digits(kw):
    result = train(quick(epochs=2, **kw), save=False)
    assert len(result.history) == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)
    assert 0.0 <= result.eval["balanced_accuracy"] <= 1.0


def test_graph_step_matches_eager_for_balpoe_and_reports_compound_bn():
    from ltlib.families import eager_reason

    cfg = dict(loss="balpoe", epochs=2, imbalance=10, lr=0.02)
    eager = train(quick(engine="eager", **cfg), save=False)
    graph = train(quick(engine="graph", **cfg), save=False)
    assert [h["loss"] for h in graph.history] == pytest.approx([h["loss"] for h in eager.history], rel=2e-3)
    assert "norm 'compound_bn' initialises its mixture" in eager_reason(quick(model="cnn", norm="compound_bn"))


def test_schemes_are_selectable_from_the_cli(capsys):
    from ltlib.cli import main
    from ltlib.runs import list_runs

    common = ["train", "--preset", "digits-quick", "--epochs", "2", "--quiet"]
    assert main([*common, "--schedule", "crt", "--model", "cnn", "--norm", "compound_bn", "--norm-param", "components=2"]) == 0
    assert main([*common, "--loss", "balpoe", "--loss-param", "lambdas=[1, -1]", "--mixing", "mixup"]) == 0
    assert main([*common, "--model", "bbn", "--mixing", "bbn", "--model-param", "backbone=cnn"]) == 0
    runs = {r.config["loss"]: r for r in list_runs()}
    assert runs["balpoe"].arrays["test_expert_logits"].shape[0] == 2
    assert main([*common, "--norm", "compound_bn", "--norm-param", "k=2"]) == 2
    assert "has no parameter 'k'; its parameters: components, momentum, eps" in capsys.readouterr().err


def test_compound_bn_keeps_fp32_statistics_under_autocast():
    from ltlib.models import CompoundBatchNorm

    x = torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(1)) * 100 + 1000  # bf16 would lose these
    ref, cbn = CompoundBatchNorm(3, components=2), CompoundBatchNorm(3, components=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = cbn(x)
    assert out.dtype == torch.float32 and torch.allclose(out, ref(x), atol=1e-5)
