import numpy as np
import pytest
import torch

from ltlib import samplers
from ltlib.families import eager_reason
from ltlib.losses import build as build_loss
from ltlib.models import build_model
from ltlib.presets import preset
from ltlib.state import TrainState
from ltlib.train import Inputs, prepare_data, train

COUNTS = np.array([100.0, 40.0, 10.0, 1.0])


def closed_form(name: str, epoch: int = 0, epochs: int = 1, **params) -> np.ndarray:
    """The papers' formulas written out by hand for COUNTS = (100, 40, 10, 1)."""
    n = COUNTS
    if name == "instance":
        return n / 151
    if name == "class_balanced":
        return np.full(4, 0.25)
    if name == "sqrt":
        r = np.array([10.0, np.sqrt(40), np.sqrt(10), 1.0])
        return r / r.sum()
    if name == "power":
        r = n ** params["q"]
        return r / r.sum()
    if name == "progressive":
        t = epoch / epochs
        return (1 - t) * n / 151 + t * 0.25
    if name == "reverse":  # BBN: w_c = n_max / n_c = (1, 2.5, 10, 100), normalised
        w = np.array([1.0, 2.5, 10.0, 100.0])
        return w / 113.5
    raise KeyError(name)


CASES = [
    ("instance", {}, 0, 1),
    ("class_balanced", {}, 0, 1),
    ("sqrt", {}, 0, 1),
    ("power", {"q": 0.3}, 0, 1),
    ("power", {"q": -0.5}, 0, 1),
    ("progressive", {}, 0, 10),
    ("progressive", {}, 4, 10),
    ("progressive", {}, 9, 10),
    ("reverse", {}, 0, 1),
]


@pytest.mark.parametrize("name, params, epoch, epochs", CASES)
def test_closed_form_probabilities(name, params, epoch, epochs):
    p = samplers.class_probabilities(name, COUNTS, epoch, epochs, **params)
    np.testing.assert_allclose(p, closed_form(name, epoch, epochs, **params), rtol=0, atol=1e-9)


def test_hand_values():
    np.testing.assert_allclose(samplers.class_probabilities("reverse", [1, 4])[0], 0.8, atol=1e-12)  # (4/1)/(4/1 + 4/4)
    np.testing.assert_allclose(samplers.class_probabilities("progressive", [3, 1], 1, 2), [0.625, 0.375], atol=1e-12)
    np.testing.assert_allclose(samplers.class_probabilities("sqrt", [9, 1]), [0.75, 0.25], atol=1e-12)


@pytest.mark.parametrize("name, params, epoch, epochs", CASES)
def test_drawn_frequencies_match(name, params, epoch, epochs):
    labels = torch.cat([torch.full((int(c),), i) for i, c in enumerate(COUNTS)])
    p = samplers.class_probabilities(name, COUNTS, epoch, epochs, **params)
    g = torch.Generator().manual_seed(0)
    idx = samplers.draw_indices(labels, p, 100_000, g)
    freq = np.bincount(labels[idx].numpy(), minlength=4) / 100_000
    np.testing.assert_allclose(freq, p, atol=0.01)


def test_zero_count_class_is_never_drawn():
    for name in ("sqrt", "reverse", "progressive", "class_balanced"):
        assert samplers.class_probabilities(name, [5, 0, 2], 1, 2)[1] == 0


def test_power_rejects_out_of_range_q():
    with pytest.raises(ValueError, match=r"sampler 'power': q=3 is out of range; allowed: a number in \[-1, 1\]"):
        samplers.class_probabilities("power", COUNTS, q=3)
    with pytest.raises(ValueError, match=r"sampler 'power': q=3 is out of range"):
        samplers.build("power", COUNTS, 5, q=3)


def test_meta_rejects_bad_parameters_by_name():
    with pytest.raises(ValueError, match=r"lr=0 is out of range; allowed: a number in \(0, inf\)"):
        samplers.build("meta", COUNTS, 5, lr=0.0)
    with pytest.raises(ValueError, match="meta_per_class=0 is out of range"):
        samplers.build("meta", COUNTS, 5, meta_per_class=0)
    with pytest.raises(ValueError, match="sampler 'sqrt' has no parameter 'q'"):
        samplers.build("sqrt", COUNTS, 5, q=0.5)


@pytest.mark.parametrize("name, params, epoch, epochs", CASES)
def test_built_sampler_keeps_its_parameters(name, params, epoch, epochs):
    sampler = samplers.build(name, COUNTS, epochs, **params)
    assert sampler.name == name and sampler.params == params and sampler.instance == (name == "instance")
    np.testing.assert_allclose(sampler.probabilities(epoch), closed_form(name, epoch, epochs, **params), rtol=0, atol=1e-9)
    assert sampler.within_class(torch.tensor([0, 1, 2, 3]), None) is None
    assert sampler.learner is None and "epoch hook" not in sampler.traits
    sampler.on_epoch_start(epoch, None)  # a fixed sampler's hook does nothing


def test_built_selective_balanced_gives_within_class_weights():
    sampler = samplers.build("selective_balanced", [2, 1], 3)
    labels, domains = torch.tensor([0, 0, 1]), torch.tensor([0, 1, 0])
    assert sampler.within_class(labels, domains).tolist() == [1.0, 1.0, 1.0]
    assert sampler.traits == {"domains"}
    np.testing.assert_allclose(sampler.probabilities(0), [0.5, 0.5])


def test_meta_sampler_starts_at_instance_sampling_and_init_pow_tilts_it():
    np.testing.assert_allclose(samplers.class_probabilities("meta", COUNTS), COUNTS / 151, atol=1e-6)
    # init_pow = 1: σ(w_c) = r_c / (min r + max r) with r_c = 1/π_c, and p_c ∝ n_c·σ(w_c)
    p = samplers.class_probabilities("meta", COUNTS, init_pow=1.0)
    prior = COUNTS / 151
    r = 1 / prior
    expect = COUNTS * r / (r.min() + r.max())
    np.testing.assert_allclose(p, expect / expect.sum(), atol=1e-6)


def test_meta_sampler_logs_rates_and_learns_toward_the_tail():
    result = train(preset("digits-quick", epochs=6, sampler="meta"), save=False)
    rates = [np.array(h["sampler_rates"]) for h in result.history]
    assert len(rates) == 6 and all(abs(r.sum() - 1) < 1e-6 for r in rates)
    assert all("meta_loss" in h for h in result.history)
    tail = np.argsort(rates[0])[:3]  # the three rarest classes (rates start ∝ n_c)
    assert rates[-1][tail].sum() > rates[0][tail].sum()  # the balanced meta loss pulls rate to the tail


def test_meta_sampler_rates_are_saved_and_plotted():
    from ltlib import plots
    from ltlib.runs import load_run

    run = load_run(train(preset("digits-quick", epochs=2, sampler="meta")).run_id)
    fig = plots.sampler_rates(run)
    assert len(fig.data) == 10 and list(fig.data[0].x) == [1, 2]
    np.testing.assert_allclose(sum(np.array(t.y) for t in fig.data), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="logged no sampler_rates"):
        plots.sampler_rates(load_run(train(preset("digits-quick", epochs=1)).run_id))


def test_meta_step_gradient_reaches_the_sampling_logits():
    """One meta step moves w (the straight-through Gumbel draw carries the meta gradient)."""
    cfg = preset("digits-quick", sampler="meta")
    data = prepare_data(cfg)
    counts = data.class_counts()
    model = build_model("mlp", data.input_shape, data.num_classes)
    loss = build_loss("ce", counts)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sampler = samplers.build("meta", counts, 5, meta_steps=1)
    assert "epoch hook" in sampler.traits and not sampler.instance
    device, generator = torch.device("cpu"), torch.Generator().manual_seed(0)
    state = TrainState(cfg, data, model, loss, opt, counts, device, generator, sampler=sampler, inputs=Inputs(data, device))
    before = sampler.learner.w.detach().clone()
    start = sampler.probabilities(0)
    sampler.on_epoch_start(0, state)
    assert not torch.equal(before, sampler.learner.w.detach())
    np.testing.assert_allclose(state.class_probs, sampler.probabilities(1))  # the learned rates, whatever the epoch
    assert not np.allclose(start, sampler.probabilities(1))


def test_every_sampler_runs_on_the_graph_engine():
    # The meta sampler too: its meta steps run between graph epochs and change only its class weights.
    for name in samplers.available():
        assert eager_reason(preset("digits-quick", sampler=name)) is None, name
