"""Adam's parameter groups: backbone, prompt (own rate, own decay), quantizer (no decay)."""

from __future__ import annotations

import pytest
import torch

from lorap_dist.config import ModelConfig, PromptConfig, TrainConfig
from lorap_dist.nn import build_model
from lorap_dist.optim import build_optimizer, parameter_groups, prompt_rate
from lorap_dist.quant import quantize_
from lorap_dist.quant.schemes.a2q import A2QConfig


def model_with_every_kind():
    model = build_model(6, 3, ModelConfig(arch="gcn", hidden=8), PromptConfig(kind="gpf_lorap"))
    quantize_(model, A2QConfig(init_bits=4), num_nodes=20)  # learned per-node steps and bits
    return model


def test_every_parameter_is_in_exactly_one_group_with_its_settings():
    model = model_with_every_kind()
    train = TrainConfig(lr=0.02, weight_decay=1e-3, prompt_lr_scale=0.25, prompt_weight_decay=0)
    groups = {g["name"]: g for g in parameter_groups(model, train)}
    assert set(groups) == {"backbone", "prompt", "quantizer"}
    grouped = [id(p) for g in groups.values() for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())
    prompt_ids = {id(p) for conv in model.convs for p in conv.lorap.parameters()}
    prompt_ids |= {id(p) for p in model.gpf.parameters()}
    assert {id(p) for p in groups["prompt"]["params"]} == prompt_ids
    assert {id(p) for p in groups["backbone"]["params"]} == {
        id(p) for name, p in model.named_parameters() if ".lin.weight" in name or "bias" in name
    }
    assert (groups["backbone"]["lr"], groups["backbone"]["weight_decay"]) == (0.02, 1e-3)
    assert (groups["prompt"]["lr"], groups["prompt"]["weight_decay"]) == (0.005, 0)
    assert (groups["quantizer"]["lr"], groups["quantizer"]["weight_decay"]) == (0.02, 0.0)


def test_an_undecayed_group_is_not_pulled_toward_zero():
    model = model_with_every_kind()
    optimizer = build_optimizer(model, TrainConfig(lr=0.1, weight_decay=0.5))
    before = {id(p): p.detach().clone() for p in model.parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # only weight decay can move a parameter
    optimizer.step()
    for group in optimizer.param_groups:
        moved = any(not torch.equal(p, before[id(p)]) for p in group["params"])
        assert moved == (group["name"] == "backbone"), group["name"]


def test_a_float_model_has_one_group():
    model = build_model(6, 3, ModelConfig(), PromptConfig())
    groups = parameter_groups(model, TrainConfig())
    assert [g["name"] for g in groups] == ["backbone"]


def test_quantizer_state_takes_its_own_rate_through_the_whole_schedule():
    """``train.quantizer_lr_scale`` sets the quantizer group's rate when the optimizer is
    built and at every epoch the schedule sets (A2Q's recipes train its steps and bits faster
    than the backbone); the other groups keep theirs, and step decay scales it too."""
    from lorap_dist.optim import schedule_lr

    train = TrainConfig(
        lr=0.1, prompt_lr_scale=0.5, quantizer_lr_scale=10.0, prompt_warmup=0,
        lr_decay_every=2, lr_decay=0.5, epochs=4,
    )  # fmt: skip
    model = model_with_every_kind()
    optimizer = build_optimizer(model, train)
    assert {g["name"]: g["lr"] for g in optimizer.param_groups} == pytest.approx(
        {"backbone": 0.1, "prompt": 0.05, "quantizer": 1.0}
    )
    schedule_lr(optimizer, 2, train)
    assert {g["name"]: g["lr"] for g in optimizer.param_groups} == pytest.approx(
        {"backbone": 0.05, "prompt": 0.025, "quantizer": 0.5}
    )
    # one Adam step moves a bit width by about the group's rate, ten times the backbone's
    bits = next(p for n, p in model.named_parameters() if n.endswith(".pool_bits"))
    before = bits.detach().clone()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    assert torch.allclose(before - bits.detach(), torch.full_like(bits, 0.5), atol=1e-4)


@pytest.mark.parametrize("bad", [0, -1.0, "fast"])
def test_a_bad_quantizer_rate_is_a_config_error_naming_the_field(bad):
    from lorap_dist.config import ConfigError

    with pytest.raises(ConfigError, match=r"train.quantizer_lr_scale=.* must be a number > 0"):
        TrainConfig(quantizer_lr_scale=bad)


@pytest.mark.parametrize("field", ["prompt_lr_scale", "prompt_weight_decay"])
def test_bad_prompt_settings_are_config_errors(field):
    from lorap_dist.config import ConfigError

    with pytest.raises(ConfigError, match=f"train.{field}"):
        TrainConfig(**{field: -1.0})


def test_a_warm_start_keeps_the_prompt_still_then_trains_it():
    from lorap_dist.optim import schedule_lr

    model = model_with_every_kind()
    train = TrainConfig(lr=0.1, prompt_lr_scale=0.5, prompt_warmup=2, epochs=5)
    optimizer = build_optimizer(model, train)
    prompt = next(g for g in optimizer.param_groups if g["name"] == "prompt")
    w_phi = model.convs[0].lorap.w_phi
    for epoch in range(4):
        schedule_lr(optimizer, epoch, train)
        before = w_phi.detach().clone()
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        optimizer.step()
        assert torch.equal(w_phi, before) == (epoch < 2), epoch
        assert prompt["lr"] == (0.0 if epoch < 2 else 0.05)


@pytest.mark.parametrize(("epochs", "still"), [(200, 50), (10, 2), (3, 0), (1, 0)])
def test_trained_together_the_prompt_is_still_for_the_first_quarter_of_the_epochs(epochs, still):
    from lorap_dist.optim import schedule_lr

    train = TrainConfig(lr=0.1, prompt_lr_scale=0.5, epochs=epochs, prompt_tuning_epochs=0)
    assert train.prompt_warmup is None and train.prompt_warmup_epochs == still
    optimizer = build_optimizer(model_with_every_kind(), train)
    prompt = next(g for g in optimizer.param_groups if g["name"] == "prompt")
    rates = []
    for epoch in range(epochs):
        schedule_lr(optimizer, epoch, train)
        rates.append(prompt["lr"])
    assert rates == [0.0] * still + [0.05] * (epochs - still)


@pytest.mark.parametrize(
    ("after_search", "expected"),
    [
        (None, [0.0] * 6 + [0.05] * 2),  # the default waits
        (True, [0.0] * 6 + [0.05] * 2),
        (False, [0.0] * 2 + [0.05] * 6),
    ],
)
def test_the_prompt_waits_for_a_search_unless_told_otherwise(after_search, expected):
    from lorap_dist.optim import schedule_lr

    train = TrainConfig(lr=0.1, prompt_lr_scale=0.5, epochs=8, prompt_after_search=after_search,
                        prompt_tuning_epochs=0)  # fmt: skip
    optimizer = build_optimizer(model_with_every_kind(), train)
    prompt = next(g for g in optimizer.param_groups if g["name"] == "prompt")
    rates = []
    for epoch in range(8):
        schedule_lr(optimizer, epoch, train, searching=epoch < 6)  # a search of 6 epochs
        rates.append(prompt["lr"])
        assert {g["name"]: g["lr"] for g in optimizer.param_groups if g is not prompt} == {
            "backbone": 0.1,
            "quantizer": 0.1,
        }
    assert rates == expected


def test_a_non_boolean_prompt_after_search_is_a_config_error():
    from lorap_dist.config import ConfigError

    with pytest.raises(ConfigError, match=r"train.prompt_after_search='yes' must be true, false"):
        TrainConfig(prompt_after_search="yes")


def test_an_explicit_warm_start_replaces_the_default():
    assert TrainConfig(epochs=200, prompt_warmup=0).prompt_warmup_epochs == 0
    assert TrainConfig(epochs=200, prompt_warmup=120).prompt_warmup_epochs == 120


@pytest.mark.parametrize("bad", [-1, 10, 11, 2.5, True, "5"])
def test_a_bad_warm_start_is_a_config_error_naming_the_field(bad):
    from lorap_dist.config import ConfigError

    with pytest.raises(ConfigError, match=r"train.prompt_warmup=.*train.epochs=10"):
        TrainConfig(epochs=10, prompt_warmup=bad)


def test_prompt_tuning_holds_the_prompt_through_the_run_then_trains_it_alone():
    """``train.prompt_tuning_epochs``: whatever the epoch or search, the run's epochs keep the
    prompt at rate 0 (no warm start ends it), and the tuning epochs train only the prompt."""
    from lorap_dist.optim import schedule_lr

    train = TrainConfig(lr=0.1, prompt_lr_scale=0.5, quantizer_lr_scale=2.0, epochs=8,
                        prompt_tuning_epochs=3, prompt_tuning_lr_scale=3.0)  # fmt: skip
    optimizer = build_optimizer(model_with_every_kind(), train)
    rates = []
    for epoch, tuning in [(0, False), (5, False), (7, False), (8, True), (10, True), (3, True)]:
        schedule_lr(optimizer, epoch, train, searching=epoch < 2, tuning=tuning)
        rates.append({g["name"]: g["lr"] for g in optimizer.param_groups})
    run = {"backbone": 0.1, "prompt": 0.0, "quantizer": 0.2}
    tune = {"backbone": 0.0, "prompt": 0.1 * 3.0, "quantizer": 0.0}
    assert rates == [run] * 3 + [tune] * 3


def test_prompt_tuning_has_its_own_rate_whose_default_is_not_the_trained_together_one():
    """``train.prompt_tuning_lr_scale: null`` (the default) tunes the prompts at
    ``lr * DEFAULT_TUNING_PROMPT_LR_SCALE`` in full-batch training and at
    ``lr * SAMPLED_TUNING_PROMPT_LR_SCALE`` with ``train.fanout``, whatever
    ``prompt_lr_scale`` (the rate beside a training backbone) says; trained together, the
    prompts keep ``prompt_lr_scale``."""
    from lorap_dist.config import DEFAULT_TUNING_PROMPT_LR_SCALE, SAMPLED_TUNING_PROMPT_LR_SCALE
    from lorap_dist.optim import schedule_lr

    train = TrainConfig(lr=0.01, prompt_lr_scale=0.5, epochs=8, prompt_tuning_epochs=2)
    assert train.tuning_prompt_lr_scale == DEFAULT_TUNING_PROMPT_LR_SCALE
    optimizer = build_optimizer(model_with_every_kind(), train)
    schedule_lr(optimizer, 8, train, tuning=True)
    assert prompt_rate(optimizer) == 0.01 * DEFAULT_TUNING_PROMPT_LR_SCALE
    together = TrainConfig(lr=0.01, prompt_lr_scale=0.5, epochs=8, prompt_tuning_epochs=0)
    schedule_lr(optimizer, 7, together)
    assert prompt_rate(optimizer) == 0.01 * 0.5
    # sampled training (many steps an epoch) keeps the trained-together default rate
    sampled = TrainConfig(lr=0.01, prompt_lr_scale=0.5, fanout=[5, 5], prompt_tuning_epochs=2)
    assert sampled.tuning_prompt_lr_scale == SAMPLED_TUNING_PROMPT_LR_SCALE == 0.1
    schedule_lr(optimizer, 8, sampled, tuning=True)
    assert prompt_rate(optimizer) == 0.01 * SAMPLED_TUNING_PROMPT_LR_SCALE
    assert TrainConfig(fanout=[5], prompt_tuning_lr_scale=3.0).tuning_prompt_lr_scale == 3.0


@pytest.mark.parametrize("bad", [0, -1.0, True, "5"])
def test_a_bad_prompt_tuning_rate_is_a_config_error_naming_the_field(bad):
    from lorap_dist.config import ConfigError

    with pytest.raises(ConfigError, match=r"train.prompt_tuning_lr_scale=.* must be a number"):
        TrainConfig(prompt_tuning_lr_scale=bad)


@pytest.mark.parametrize(
    ("train", "tuning"),
    [
        ({"epochs": 200}, 100),  # the default: half of the epochs with patience ...
        ({"epochs": 200, "patience": 0}, 50),  # ... a quarter without it (all of them run)
        ({"epochs": 1}, 1),  # ... at least one
        ({"epochs": 3, "patience": 0}, 1),
        ({"epochs": 200, "prompt_warmup": 20}, 0),  # a warm start asks for training together
        ({"epochs": 200, "prompt_warmup": 0}, 0),
        ({"epochs": 200, "prompt_tuning_epochs": 0}, 0),
        ({"epochs": 200, "prompt_tuning_epochs": 7}, 7),
    ],
)
def test_by_default_the_prompt_is_tuned_on_the_frozen_backbone_for_half_the_epochs_with_patience(
    train, tuning
):
    """``train.prompt_tuning_epochs: null`` (the default) resolves in ``tuning_epochs``; with
    it the run's epochs hold the prompt still whatever the warm start's default says."""
    from lorap_dist.optim import schedule_lr

    config = TrainConfig(lr=0.1, prompt_lr_scale=0.5, **train)
    assert config.tuning_epochs == tuning
    optimizer = build_optimizer(model_with_every_kind(), config)
    schedule_lr(optimizer, config.epochs - 1, config)  # past any warm start
    assert prompt_rate(optimizer) == (0.0 if tuning else 0.05)


@pytest.mark.parametrize("bad", [-1, 2.5, True, "5"])
def test_bad_prompt_tuning_epochs_are_a_config_error(bad):
    from lorap_dist.config import ConfigError

    with pytest.raises(ConfigError, match=r"train.prompt_tuning_epochs=.* must be a whole"):
        TrainConfig(prompt_tuning_epochs=bad)


def test_prompt_tuning_with_a_warm_start_is_a_config_error_naming_both():
    from lorap_dist.config import ConfigError

    with pytest.raises(ConfigError, match=r"prompt_tuning_epochs=20 .*train.prompt_warmup=5"):
        TrainConfig(epochs=40, prompt_warmup=5, prompt_tuning_epochs=20)
    assert TrainConfig(epochs=40, prompt_warmup=0, prompt_tuning_epochs=20).prompt_tuning_epochs


def test_step_decay_scales_every_group_by_the_epoch_alone():
    from lorap_dist.optim import schedule_lr

    model = model_with_every_kind()
    train = TrainConfig(
        lr=0.1, prompt_lr_scale=0.5, prompt_warmup=0, lr_decay_every=3, lr_decay=0.5, epochs=10
    )
    optimizer = build_optimizer(model, train)
    rates = {}
    for epoch in (7, 0, 3, 6):  # out of order: a resumed run starts mid-schedule
        schedule_lr(optimizer, epoch, train)
        rates[epoch] = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert rates[0] == {"backbone": 0.1, "prompt": 0.05, "quantizer": 0.1}
    assert rates[3] == {"backbone": 0.05, "prompt": 0.025, "quantizer": 0.05}
    assert rates[6] == rates[7] == {"backbone": 0.025, "prompt": 0.0125, "quantizer": 0.025}


def test_bad_step_decay_settings_are_config_errors():
    from lorap_dist.config import ConfigError

    with pytest.raises(ConfigError, match="train.lr_decay_every"):
        TrainConfig(lr_decay_every=-1)
    with pytest.raises(ConfigError, match="train.lr_decay="):
        TrainConfig(lr_decay=0.0)
