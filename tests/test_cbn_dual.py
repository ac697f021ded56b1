"""Dual-path compound batch norm: class-aware split normalisation, the consistency term, training, CLI."""

import math

import pytest
import torch

from ltlib.models import NORMS, DualPathCompoundBatchNorm, build_model, component_owners, frequency_groups, set_batch_context
from ltlib.presets import preset
from ltlib.train import train


def test_classes_and_components_are_split_into_frequency_groups():
    # Counts 5, 100, 20, 1: most frequent first is classes 1, 2 (head), then 0, 3 (tail); an odd class out goes to the head.
    assert frequency_groups([50, 10, 2], 2).tolist() == [0, 0, 1]
    assert frequency_groups([5, 100, 20, 1], 2).tolist() == [1, 0, 0, 1]
    assert frequency_groups([5, 100, 20, 1, 50, 7], 3).tolist() == [2, 0, 1, 2, 0, 1]
    # The larger blocks of components go to the less frequent groups.
    assert component_owners(3, 2).tolist() == [0, 1, 1]
    assert component_owners(5, 3).tolist() == [0, 1, 1, 2, 2]
    assert component_owners(2, 2).tolist() == [0, 1]


def hand_layer() -> DualPathCompoundBatchNorm:
    """One channel, two components (head owns 0, tail owns 1), running means 0, variances 1, already initialised."""
    layer = DualPathCompoundBatchNorm(1, components=2, splits=2)
    layer.initialized.fill_(True)
    layer.class_group = torch.tensor([0, 1])  # class 0 is head, class 1 tail
    return layer


@pytest.mark.parametrize("shape", [(4, 1), (2, 1, 1, 2)])
def test_auxiliary_path_normalises_each_frequency_group_with_its_own_statistics(shape):
    """Head samples {0, 2} (mean 1, variance 1) and tail samples {10, 14} (mean 12, variance 4) each map
    to {−1, +1}; as pixels of two images (second shape) each image's pixels follow its label's group."""
    layer = hand_layer()
    x = torch.tensor([0.0, 2.0, 10.0, 14.0]).reshape(shape).requires_grad_()
    layer.labels = torch.tensor([0, 0, 1, 1]) if shape[0] == 4 else torch.tensor([0, 1])
    out = layer(x)
    expected = torch.tensor([-1.0, 1.0, -1.0, 1.0]) / math.sqrt(1 + 1e-5)
    assert torch.allclose(out.flatten(), expected.reshape(-1), atol=1e-4)
    # Each group moved only its own component (momentum 0.1); the mixture weights did not move.
    assert layer.running_means.flatten().tolist() == pytest.approx([0.1, 1.2])
    assert layer.running_vars.flatten().tolist() == pytest.approx([1.0, 1.3])
    assert layer.running_priors.tolist() == pytest.approx([0.5, 0.5])
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_without_labels_the_layer_is_compound_bn_over_the_whole_batch():
    from ltlib.models import CompoundBatchNorm

    x = torch.randn(16, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 + 1
    dual, plain = DualPathCompoundBatchNorm(3, components=3), CompoundBatchNorm(3, components=3)
    assert torch.allclose(dual(x), plain(x), atol=1e-6)
    assert torch.allclose(dual.running_priors, plain.running_priors)
    dual.eval(), plain.eval()
    dual.labels, dual.class_group = torch.zeros(16, dtype=torch.long), torch.tensor([0])
    assert torch.allclose(dual(x), plain(x), atol=1e-6)  # at test only the mainstream path exists


def test_consistency_term_follows_the_formula_and_stops_the_auxiliary_gradient():
    """z_main = (0, ln 3) → p = (¼, ¾); z_aux = (0, 0) → q = (½, ½); y = 1, λ = 2:
    CE(z_aux, y) + λ·‖p − sg(q)‖² = ln 2 + 2·(1/16 + 1/16) = ln 2 + 0.25."""
    layer = DualPathCompoundBatchNorm(1, components=2, consistency=2.0)
    main = torch.tensor([[0.0, math.log(3.0)]], requires_grad=True)
    aux = torch.tensor([[0.0, 0.0]], requires_grad=True)
    value = layer.dual_objective(main, aux, torch.tensor([1]))
    assert value.item() == pytest.approx(math.log(2) + 0.25)
    value.backward()
    # The auxiliary logits get only the cross-entropy gradient q − onehot(y); the consistency pulls the mainstream.
    assert aux.grad.flatten().tolist() == pytest.approx([0.5, -0.5])
    # d/dz_main of 2·Σ(p − q)²: 4·J_softmax·(p − q), with p − q = (−¼, ¼) and J = [[3/16, −3/16], [−3/16, 3/16]].
    assert main.grad.flatten().tolist() == pytest.approx([-0.375, 0.375])


def test_extra_loss_runs_the_auxiliary_pass_only_in_training():
    model = build_model("cnn", (1, 8, 8), 3, norm="compound_bn_dual")
    x, y = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 0, 0, 1, 1, 2])
    logits = model(x)
    assert model.extra_loss(x, y, logits) is None  # no class groups handed yet (no epoch started)
    model.on_epoch_start(0, type("State", (), {"class_counts": [50, 10, 2]})())
    layers = [m for m in model.modules() if isinstance(m, DualPathCompoundBatchNorm)]
    assert len(layers) == 2 and all(m.class_group.tolist() == [0, 0, 1] for m in layers)
    before = [m.running_means.clone() for m in layers]
    term = model.extra_loss(x, y, logits)
    assert term is not None and term.ndim == 0 and torch.isfinite(term)
    assert all(m.labels is None for m in layers)  # the labels do not outlive the auxiliary pass
    # The auxiliary pass moved the components: head (0) from classes 0 and 1, tail (1, 2) from class 2.
    assert all(not torch.equal(b, m.running_means) for b, m in zip(before, layers))
    model.eval()
    assert model.extra_loss(x, y, logits) is None
    assert build_model("cnn", (1, 8, 8), 3).extra_loss(x, y, logits) is None


def test_bad_parameters_are_rejected():
    with pytest.raises(ValueError, match="splits=4 is out of range"):
        DualPathCompoundBatchNorm(4, components=3, splits=4)
    with pytest.raises(ValueError, match=r"norm layer 'compound_bn_dual': consistency=-1 is out of range; allowed: a number in \[0, inf\)"):
        NORMS.build("compound_bn_dual", 4, consistency=-1.0)
    with pytest.raises(ValueError, match="splits=1 is out of range"):
        build_model("cnn", (1, 8, 8), 3, norm="compound_bn_dual", norm_params={"splits": 1})


def test_dual_compound_bn_trains_two_epochs_of_digits_eagerly():
    from ltlib.families import eager_reason

    cfg = preset("digits-quick", epochs=2, model="cnn", norm="compound_bn_dual")
    result = train(cfg, save=False)
    assert len(result.history) == 2 and all(math.isfinite(h["loss"]) for h in result.history)
    assert 0.0 <= result.eval["balanced_accuracy"] <= 1.0
    assert "second, class-aware forward pass" in eager_reason(cfg)


def test_dual_compound_bn_is_selectable_from_the_cli(capsys):
    from ltlib.cli import main
    from ltlib.runs import list_runs

    common = ["train", "--preset", "digits-quick", "--epochs", "2", "--quiet", "--model", "cnn", "--norm", "compound_bn_dual"]
    assert main([*common, "--norm-param", "consistency=0.5", "--norm-param", "components=2"]) == 0
    (run,) = list_runs()
    assert run.config["norm"] == "compound_bn_dual" and run.config["norm_params"] == {"consistency": 0.5, "components": 2}
    assert main([*common, "--norm-param", "k=2"]) == 2
    assert "its parameters: components, momentum, eps, splits, consistency" in capsys.readouterr().err


def test_batch_context_reaches_only_layers_that_ask_for_the_key():
    model = build_model("cnn", (1, 8, 8), 3, norm="compound_bn_dual")
    labels = torch.tensor([1, 2])
    set_batch_context(model, labels=labels, noise_mask=torch.tensor([True, False]))
    layers = [m for m in model.modules() if isinstance(m, DualPathCompoundBatchNorm)]
    assert all(m.labels is labels for m in layers)
    assert not any(hasattr(m, "noise_mask") for m in model.modules())


def test_bbn_hands_class_groups_to_dual_layers_and_keeps_its_alpha():
    model = build_model("bbn", (1, 8, 8), 4, norm="compound_bn_dual", backbone="cnn")
    state = type("State", (), {"class_counts": [40, 20, 5, 1], "cfg": type("Cfg", (), {"epochs": 10})(), "log": {}})()
    model.on_epoch_start(5, state)
    layers = [m for m in model.modules() if isinstance(m, DualPathCompoundBatchNorm)]
    assert layers and all(m.class_group.tolist() == [0, 0, 1, 1] for m in layers)
    assert state.log["bbn_alpha"] == pytest.approx(1 - 0.5**2)
