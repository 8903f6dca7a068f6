"""MixQ: config validation, the mixture against its formula, gradients of the mixing logits,
the expected-bits penalty, top-1 selection and the reported bits."""

from __future__ import annotations

import pytest
import torch

from lorap_dist.config import ConfigError, ModelConfig, PromptConfig, QuantSettings, to_dict
from lorap_dist.nn import GraphGNN, build_model
from lorap_dist.quant import (
    average_bits,
    calculate_qparams,
    fake_quantize,
    quant_range,
    quantize_,
    quantizers_of,
)
from lorap_dist.quant.observers import EMAObserver, MinMaxObserver
from lorap_dist.quant.schemes.mixq import (
    MixQConfig,
    MixQQuantizer,
    _Mixture,
    freeze_mixq,
    mixq_bits,
)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"candidate_bits": ()}, "MixQConfig.candidate_bits=()"),
        ({"candidate_bits": (1, 4)}, "MixQConfig.candidate_bits entry 1"),
        ({"candidate_bits": (4, 4)}, "MixQConfig.candidate_bits=[4, 4]"),
        ({"candidate_bits": 4}, "MixQConfig.candidate_bits=4"),
        ({"penalty": -0.1}, "MixQConfig.penalty=-0.1"),
        ({"observer": "percentile"}, "MixQConfig.observer='percentile'"),
        ({"momentum": 0.0}, "MixQConfig.momentum=0.0"),
        ({"symmetric": 1}, "MixQConfig.symmetric=1"),
        ({"search_fraction": 0.0}, "MixQConfig.search_fraction=0.0"),
        ({"search_fraction": 1.5}, "MixQConfig.search_fraction=1.5"),
        ({"final_temperature": 0}, "MixQConfig.final_temperature=0"),
        ({"search_logits": "yes"}, "MixQConfig.search_logits='yes'"),
    ],
)
def test_invalid_fields_are_named(options, named):
    with pytest.raises(
        ConfigError,
        match=named.replace(".", r"\.")
        .replace("(", r"\(")
        .replace(")", r"\)")
        .replace("[", r"\[")
        .replace("]", r"\]"),
    ):
        MixQConfig(**options)


def test_config_round_trips_through_a_dict():
    config = MixQConfig(candidate_bits=(2, 8), penalty=0.1, observer="ema")
    built = QuantSettings(scheme="mixq", options=to_dict(config)).build()
    assert built == config and built.candidate_bits == (2, 8)


def _quantizer(bits=(2, 4, 8), penalty=0.1, **schedule) -> MixQQuantizer:
    return MixQQuantizer(
        bits,
        symmetric=False,
        per_row=False,
        observer=MinMaxObserver(),
        penalty=penalty,
        **schedule,
    )


def _fq(x: torch.Tensor, bits: int) -> torch.Tensor:
    scale, zero_point = calculate_qparams(x.min(), x.max(), bits, symmetric=False)
    return fake_quantize(x, scale, zero_point, *quant_range(bits, False))


def test_mixture_value_and_the_gradient_of_the_mixing_logits():
    torch.manual_seed(0)
    quantizer = _quantizer().train()
    with torch.no_grad():
        quantizer.logits.copy_(torch.tensor([0.3, -0.2, 0.5]))
    x = torch.randn(20, 6)
    upstream = torch.randn(20, 6)
    out = quantizer(x)
    weights = torch.softmax(quantizer.logits.detach(), 0)
    candidates = [_fq(x, b) for b in (2, 4, 8)]
    torch.testing.assert_close(out, sum(w * c for w, c in zip(weights, candidates, strict=True)))
    (out * upstream).sum().backward()
    inner = torch.stack([(upstream * c).sum() for c in candidates])
    expected = weights * (inner - (weights * inner).sum())  # softmax Jacobian
    torch.testing.assert_close(quantizer.logits.grad, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # fused kernels / formulas
@pytest.mark.parametrize("axis", [None, 0])
def test_mixture_node_has_autograds_values_and_gradients(dtype, axis):
    """One autograd node against autograd through ``sum(w_i * fake_quantize_i(x))``, with a
    range narrower than ``x`` so that every candidate clips some values (and their masks
    differ)."""
    torch.manual_seed(0)
    x = (3 * torch.randn(40, 7, dtype=dtype)).requires_grad_()
    logits = torch.tensor([0.3, -0.2, 0.5], requires_grad=True)
    lo, hi = (torch.full((40,), -1.0), torch.full((40,), 1.5)) if axis == 0 else (-1.0, 1.5)
    grids = []
    for bits in (2, 4, 8):
        scale, zero_point = calculate_qparams(torch.as_tensor(lo), torch.as_tensor(hi), bits, False)
        grids.append((scale, zero_point, *quant_range(bits, False)))
    upstream = torch.randn(40, 7, dtype=dtype)

    weights = torch.softmax(logits, 0)
    mixed = _Mixture.apply(x, weights, grids, axis)
    (mixed * upstream).sum().backward()
    got = mixed.detach(), x.grad.clone(), logits.grad.clone()
    x.grad = logits.grad = None
    weights = torch.softmax(logits, 0)
    expected = sum(w * fake_quantize(x, *g, axis=axis) for w, g in zip(weights, grids, strict=True))
    (expected * upstream).sum().backward()

    assert expected.dtype == got[0].dtype == dtype
    torch.testing.assert_close(got[0], expected.detach())
    torch.testing.assert_close(got[1], x.grad)
    torch.testing.assert_close(got[2], logits.grad)
    passed = x.grad / upstream  # sum_i w_i m_i: 1 inside every grid, 0 outside all
    assert (passed == 0).any() and torch.isclose(passed, torch.ones_like(passed)).any()
    assert ((passed > 1e-3) & (passed < 1 - 1e-3)).any()  # clipped by some candidates only


def test_penalty_alone_lowers_the_expected_bits():
    quantizer = _quantizer(penalty=0.5)
    optimizer = torch.optim.SGD([quantizer.logits], lr=0.5)
    start = float(quantizer.expected_bits())
    assert start == pytest.approx(14 / 3)
    for _ in range(10):
        optimizer.zero_grad()
        quantizer.regularization().backward()
        optimizer.step()
    assert float(quantizer.expected_bits()) < start - 1
    assert quantizer.chosen_bits() == 2


def test_freeze_selects_the_argmax_and_quantizes_with_it_alone():
    quantizer = _quantizer().train()
    with torch.no_grad():
        quantizer.logits.copy_(torch.tensor([0.1, 2.0, -1.0]))
    x = torch.randn(30, 4)
    quantizer(x)
    assert quantizer.freeze() == 4
    torch.testing.assert_close(quantizer.eval()(x), _fq(x, 4))
    assert quantizer.regularization() is None and quantizer.average_bits() == 4.0


def _searched(quantizer: MixQQuantizer, values: torch.Tensor) -> MixQQuantizer:
    for _ in range(50):  # the search: a moving average of these values' extremes
        quantizer(values)
    return quantizer


def _point() -> MixQQuantizer:
    return MixQQuantizer(
        (2, 4, 8), symmetric=False, per_row=False, observer=EMAObserver(momentum=0.01),
        penalty=0.0,
    ).train()  # fmt: skip


def test_a_frozen_point_widens_its_range_to_the_values_it_now_sees_and_passes_their_gradient():
    """Freezing changes what a point sees at once (a coarse choice upstream); a range still
    following the mixture's values would clamp the new ones and pass them no gradient."""
    quantizer = _searched(_point(), torch.linspace(0.0, 1.0, 64))
    quantizer.freeze()
    # What the frozen model sends: most values above the stale range, the top one repeated.
    after = torch.cat([torch.linspace(0.0, 3.0, 60), torch.full((4,), 3.0)]).requires_grad_()
    quantizer(after).sum().backward()
    assert torch.equal(after.grad, torch.ones(64))  # no value clamped by a stale range
    assert float(quantizer.observer.max_val) == 3.0
    assert float(quantizer.observer.min_val) == 0.0
    assert not bool(quantizer.cover_pending)  # once only: the average goes on from there
    quantizer(torch.linspace(0.0, 1.0, 64))
    assert float(quantizer.observer.max_val) == pytest.approx(0.99 * 3.0 + 0.01 * 1.0)
    kept = _searched(_point(), torch.linspace(0.0, 1.0, 64))  # not frozen: clamps
    kept(after.detach())
    assert float(kept.observer.max_val) < 1.1


def test_a_frozen_point_whose_range_covers_the_bulk_keeps_clipping_rare_extremes():
    """Heavy tails (GIN's sums): a few values far above a range that covers all the others
    stay clipped, instead of stretching the grid over them."""
    bulk = torch.linspace(-1.0, 1.0, 10_000)
    quantizer = _searched(_point(), bulk)
    before = (float(quantizer.observer.min_val), float(quantizer.observer.max_val))
    quantizer.freeze()
    inside = 0.9 * bulk  # inside the grid's ends, which round the zero point
    after = torch.cat([inside, torch.tensor([50.0, 60.0, -40.0])]).requires_grad_()
    quantizer(after).sum().backward()
    assert (float(quantizer.observer.min_val), float(quantizer.observer.max_val)) == before
    assert after.grad[-3:].tolist() == [0.0, 0.0, 0.0]  # the outliers stay clipped
    assert torch.equal(after.grad[:-3], torch.ones(10_000))


def test_a_pending_widening_survives_a_checkpoint_and_older_states_load_without_one():
    quantizer = _searched(_point(), torch.linspace(0.0, 1.0, 64))
    quantizer.freeze()
    state = quantizer.state_dict()
    assert bool(state["cover_pending"])
    restored = _point()
    restored.load_state_dict(state)
    restored(torch.cat([torch.linspace(0.0, 3.0, 60), torch.full((4,), 3.0)]))
    assert float(restored.observer.max_val) == 3.0
    older = {k: v for k, v in state.items() if k != "cover_pending"}
    legacy = _point()
    legacy.load_state_dict(older)
    assert not bool(legacy.cover_pending) and legacy.frozen


def test_weight_points_keep_their_ranges_at_the_freeze():
    quantizer = MixQQuantizer(
        (2, 4, 8), symmetric=True, per_row=True, observer=MinMaxObserver(per_row=True),
        penalty=0.0,
    ).train()  # fmt: skip
    weight = torch.randn(3, 5)
    quantizer(weight)
    quantizer.freeze()
    assert not bool(quantizer.cover_pending)
    with pytest.raises(ValueError, match="one range per row"):
        quantizer.observer.widen(torch.tensor(0.0), torch.tensor(1.0))


def test_model_level_selection_and_reported_bits():
    torch.manual_seed(0)
    model = build_model(5, 3, ModelConfig(arch="sage", hidden=6), PromptConfig(kind="lorap"))
    quantize_(model, MixQConfig())
    points = dict(quantizers_of(model))
    choice = {}
    for i, (name, quantizer) in enumerate(points.items()):
        if name == "convs.1.output":  # the logits: not searched by default
            choice[name] = 8
            continue
        with torch.no_grad():
            quantizer.logits.zero_()
            quantizer.logits[i % 3] = 1.0
        choice[name] = (2, 4, 8)[i % 3]
    assert mixq_bits(model) == choice
    assert freeze_mixq(model) == choice
    assert average_bits(model) == pytest.approx(sum(choice.values()) / len(choice))
    assert all(int(q.selected) >= 0 for q in points.values())
    with pytest.raises(ValueError, match="no MixQ quantizer"):
        freeze_mixq(build_model(5, 3, ModelConfig(), PromptConfig()))


def test_schedule_anneals_the_temperature_then_freezes_to_the_argmax():
    quantizer = _quantizer(search_fraction=0.4, final_temperature=0.01)
    with torch.no_grad():
        quantizer.logits.copy_(torch.tensor([0.2, 0.1, 0.0]))
    x = torch.randn(16, 3)
    quantizer(x)
    # 10 epochs, 4 of search: T = 0.01 ** (e / 4) after epoch e (1-based), then frozen.
    assert quantizer.end_epoch(0, 10) is False and not quantizer.settled
    assert float(quantizer.temperature) == pytest.approx(0.01**0.25)
    weights = torch.softmax(quantizer.logits.detach() / 0.01**0.25, 0)
    torch.testing.assert_close(quantizer.mixing_weights().detach(), weights)
    expected = (weights * torch.tensor([2.0, 4.0, 8.0])).sum()
    torch.testing.assert_close(quantizer.expected_bits().detach(), expected)
    assert [quantizer.end_epoch(e, 10) for e in (1, 2)] == [False, False]
    assert quantizer.end_epoch(3, 10) is True  # the last search epoch: frozen
    assert quantizer.settled and quantizer.chosen_bits() == 2
    assert float(quantizer.temperature) == pytest.approx(0.01)
    torch.testing.assert_close(quantizer(x), _fq(x, 2))
    assert quantizer.end_epoch(4, 10) is False  # nothing changes after the freeze


def test_full_search_never_freezes_and_its_state_resumes_the_schedule():
    quantizer = _quantizer(search_fraction=1.0, final_temperature=0.5)
    quantizer(torch.randn(8, 2))
    assert quantizer.settled  # early stopping may stop it at any time
    assert not any(quantizer.end_epoch(e, 5) for e in range(5))
    assert not quantizer.frozen and float(quantizer.temperature) == pytest.approx(0.5)
    other = _quantizer(search_fraction=1.0, final_temperature=0.5)
    other.load_state_dict(quantizer.state_dict())
    assert float(other.temperature) == pytest.approx(0.5)


def test_training_fine_tunes_and_reports_the_frozen_model():
    from lorap_dist.config import ExperimentConfig
    from lorap_dist.graph.synthetic import generate_synthetic
    from lorap_dist.train import train

    config = ExperimentConfig.from_dict(
        {
            "data": {"synthetic": {"num_nodes": 200, "avg_degree": 5}},
            "model": {"arch": "gcn", "hidden": 8},
            "quant": {"scheme": "mixq", "options": {"search_fraction": 0.5}},
            # patience shorter than the search: early stopping must wait for the freeze
            "train": {"epochs": 8, "patience": 1, "seed": 0},
        }
    )
    graph = generate_synthetic(config.data.synthetic)
    result, model = train(config, graph, progress=False)
    points = [q for _, q in quantizers_of(model)]
    assert points and all(q.frozen for q in points)
    assert result.epochs_run > 4 and result.best_epoch >= 3  # best chosen among frozen epochs
    assert result.avg_bits == pytest.approx(sum(mixq_bits(model).values()) / len(points))


@pytest.mark.parametrize("search_logits", [False, True])
def test_only_the_logits_skip_the_search_unless_asked(search_logits):
    model = build_model(5, 3, ModelConfig(arch="gin", hidden=6, layers=3), PromptConfig())
    quantize_(model, MixQConfig(candidate_bits=(2, 4), search_logits=search_logits))
    candidates = {name: q.candidate_bits for name, q in quantizers_of(model)}
    logits = candidates.pop("convs.2.output")
    assert logits == ((2, 4) if search_logits else (4,))
    assert candidates and all(bits == (2, 4) for bits in candidates.values())


def test_a_graph_level_model_keeps_no_point_out_of_the_search():
    """Its logits come from the head's last linear, which has no node point after it, so
    every point (the last layer's output included) searches its bit width."""
    model = GraphGNN(5, 3, ModelConfig(arch="gin", hidden=6, layers=3, readout="mean"))
    quantize_(model, MixQConfig(candidate_bits=(2, 4)))
    candidates = {name: q.candidate_bits for name, q in quantizers_of(model)}
    assert "convs.2.output" in candidates
    assert all(bits == (2, 4) for bits in candidates.values())


@pytest.mark.parametrize(
    ("arch", "rounding", "logit_points"),
    [
        ("gcn", "once", {"prompt", "output"}),
        ("gat", "once", {"prompt", "output"}),
        ("gcn", "twice", {"aggregate", "prompt", "output"}),
        ("gin", "once", {"output"}),
        ("sage", "once", {"output"}),
    ],
)
def test_a_layer_that_transforms_first_keeps_its_aggregated_logits_unsearched(
    arch, rounding, logit_points
):
    """GCN and GAT aggregate the last layer's logits: those points keep the widest width."""
    prompt = PromptConfig(kind="lorap", k=2, r=1, rounding=rounding)
    model = build_model(5, 3, ModelConfig(arch=arch, hidden=6, layers=2), prompt)
    quantize_(model, MixQConfig(candidate_bits=(2, 4)))
    fixed = {
        name.removeprefix("convs.1.")
        for name, q in quantizers_of(model)
        if q.candidate_bits == (4,)
    }
    assert fixed == logit_points
    searched = [q.candidate_bits for name, q in quantizers_of(model) if name.startswith("convs.0")]
    assert searched and all(bits == (2, 4) for bits in searched)
