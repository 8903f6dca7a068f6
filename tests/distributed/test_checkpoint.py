"""Arrow checkpoints: bit-exact round trip, damage detection, fallback, architecture check."""

from __future__ import annotations

import json
import random
import re

import numpy as np
import pytest
import torch
from torch import nn

from lorap_dist.config import (
    DEFAULT_TUNING_PROMPT_LR_SCALE,
    ModelConfig,
    PromptConfig,
    TrainConfig,
)
from lorap_dist.distributed.checkpoint import (
    OLD_GPF,
    STATE_FILE,
    TENSORS_FILE,
    CheckpointError,
    TrainingState,
    architecture,
    capture_rng,
    check_architecture,
    checkpoint_name,
    latest_good_checkpoint,
    load_checkpoint,
    load_optimizer_state,
    restore_rng,
    save_checkpoint,
)
from lorap_dist.distributed.resume import keep_prompt_warmup, saved_prompt_warmup
from lorap_dist.nn import build_model
from lorap_dist.optim import build_optimizer

CONFIG = {
    "model": {"arch": "gcn", "hidden": 8, "layers": 2, "heads": 2},
    "prompt": {"kind": "lorap", "k": 4, "r": 2},
    "quant": {"scheme": "qat", "options": {"bits": 4}},
    "train": {"lr": 0.01},
}
DATASET = {"num_features": 5, "num_classes": 3, "num_nodes": 10}


def trained_state(epoch: int = 1) -> tuple[TrainingState, nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    model.register_buffer("scale", torch.tensor(0.25, dtype=torch.float64))
    model.register_buffer("empty", torch.zeros(0, 4))
    model.register_buffer("codes", torch.arange(6, dtype=torch.int8).reshape(2, 3))
    model.register_buffer("bf16", torch.randn(3).to(torch.bfloat16))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(4, 5)).sum().backward()
        opt.step()
    state = TrainingState(
        model=model.state_dict(),
        optimizer=opt.state_dict(),
        config=CONFIG,
        epoch=epoch,
        step=3 * epoch,
        rng=[capture_rng(), capture_rng()],
        dataset=DATASET,
        extra={"best_valid": 0.5},
    )
    return state, model, opt


def test_round_trip_is_bit_exact(tmp_path):
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    state, model, opt = trained_state()
    path = save_checkpoint(state, tmp_path / checkpoint_name(1))
    expected_next = (torch.rand(4), random.random(), np.random.rand())

    loaded = load_checkpoint(path, expected_architecture=architecture(CONFIG, DATASET))
    assert loaded.model.keys() == state.model.keys()
    for key, value in state.model.items():
        assert loaded.model[key].dtype == value.dtype
        assert torch.equal(loaded.model[key], value), key
    restored = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    restored_opt = torch.optim.Adam(restored.parameters(), lr=0.5)
    restored_opt.load_state_dict(loaded.optimizer)
    for pid, pstate in opt.state_dict()["state"].items():
        for key, value in pstate.items():
            assert torch.equal(restored_opt.state_dict()["state"][pid][key], value)
    assert restored_opt.param_groups[0]["lr"] == 0.01
    assert (loaded.epoch, loaded.step, loaded.extra) == (1, 3, {"best_valid": 0.5})

    torch.rand(10), random.random(), np.random.rand()  # move every RNG on
    restore_rng(loaded.rng[0])
    assert torch.equal(torch.rand(4), expected_next[0])
    assert random.random() == expected_next[1]
    assert np.random.rand() == expected_next[2]


def test_the_best_model_round_trips_beside_the_model_and_older_checkpoints_have_none(tmp_path):
    state, _, _ = trained_state()
    state.best_model = {key: value + 1 for key, value in state.model.items()}
    loaded = load_checkpoint(save_checkpoint(state, tmp_path / checkpoint_name(1)))
    assert loaded.best_model.keys() == state.model.keys() == loaded.model.keys()
    for key, value in state.model.items():
        assert torch.equal(loaded.model[key], value), key
        assert torch.equal(loaded.best_model[key], value + 1), key
    state.best_model = {}  # as written before checkpoints kept it
    assert load_checkpoint(save_checkpoint(state, tmp_path / checkpoint_name(2))).best_model == {}


def test_no_temporary_directory_is_left(tmp_path):
    state, _, _ = trained_state()
    save_checkpoint(state, tmp_path / checkpoint_name(1))
    save_checkpoint(state, tmp_path / checkpoint_name(1))  # overwrite
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint_name(1)]


@pytest.mark.parametrize("damage", ["truncate", "flip"])
@pytest.mark.parametrize("file", [TENSORS_FILE, STATE_FILE])
def test_damaged_file_is_named(tmp_path, damage, file):
    state, _, _ = trained_state()
    path = save_checkpoint(state, tmp_path / checkpoint_name(1))
    target = path / file
    data = bytearray(target.read_bytes())
    if damage == "truncate":
        target.write_bytes(bytes(data[: len(data) // 2]))
    else:
        data[len(data) // 3] ^= 0x01
        target.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=str(target).replace(".", r"\.")) as info:
        load_checkpoint(path)
    assert ("truncated" if damage == "truncate" else "corrupt") in str(info.value)


def test_checkpoints_share_the_dataset_checksum_and_older_blake2b_manifests_still_verify(
    tmp_path,
):
    import hashlib

    from lorap_dist.checksums import CHECKSUM, file_checksum

    state, _, _ = trained_state()
    path = save_checkpoint(state, tmp_path / checkpoint_name(1))
    manifest = json.loads((path / "manifest.json").read_text())
    entry = manifest["files"][TENSORS_FILE]
    assert entry[CHECKSUM] == file_checksum(path / TENSORS_FILE)
    # a checkpoint written before the shared checksum: blake2b digests and "size"
    for name in manifest["files"]:
        data = (path / name).read_bytes()
        digest = hashlib.blake2b(data, digest_size=32).hexdigest()
        manifest["files"][name] = {"blake2b": digest, "size": len(data)}
    (path / "manifest.json").write_text(json.dumps(manifest))
    assert load_checkpoint(path).epoch == state.epoch
    target = path / STATE_FILE
    target.write_bytes(target.read_bytes().replace(b"{", b"[", 1))  # same size, changed
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


def test_missing_manifest_means_incomplete(tmp_path):
    state, _, _ = trained_state()
    path = save_checkpoint(state, tmp_path / checkpoint_name(1))
    (path / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="not completely written"):
        load_checkpoint(path)


def test_latest_good_falls_back_with_warning(tmp_path):
    for epoch in (1, 2, 3):
        state, _, _ = trained_state(epoch)
        save_checkpoint(state, tmp_path / "run" / checkpoint_name(epoch))
    assert latest_good_checkpoint(tmp_path / "run").name == checkpoint_name(3)
    newest = tmp_path / "run" / checkpoint_name(3) / TENSORS_FILE
    newest.write_bytes(newest.read_bytes()[:100])
    with pytest.warns(UserWarning, match=str(newest).replace(".", r"\.")):
        good = latest_good_checkpoint(tmp_path / "run")
    assert good.name == checkpoint_name(2)
    assert load_checkpoint(good).epoch == 2
    assert latest_good_checkpoint(tmp_path / "nowhere") is None


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("model", "hidden", 16, "model.hidden: expected 16, checkpoint has 8"),
        ("model", "arch", "sage", "model.arch: expected 'sage', checkpoint has 'gcn'"),
        ("prompt", "r", 8, "prompt.r: expected 8, checkpoint has 2"),
        ("quant", "options", {"bits": 8}, "quant.options.bits: expected 8, checkpoint has 4"),
        ("quant", "scheme", "a2q", "quant.scheme: expected 'a2q', checkpoint has 'qat'"),
    ],
)
def test_mismatched_architecture_names_the_field(tmp_path, section, key, value, message):
    state, _, _ = trained_state()
    path = save_checkpoint(state, tmp_path / checkpoint_name(1))
    other = json.loads(json.dumps(CONFIG))
    other[section][key] = value
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_checkpoint(path, expected_architecture=architecture(other, DATASET))


def test_mismatched_dataset_dims_name_the_field(tmp_path):
    state, _, _ = trained_state()
    path = save_checkpoint(state, tmp_path / checkpoint_name(1))
    with pytest.raises(CheckpointError, match="dataset.num_classes: expected 7, checkpoint has 3"):
        load_checkpoint(
            path, expected_architecture=architecture(CONFIG, DATASET | {"num_classes": 7})
        )


def test_resume_path_skips_a_damaged_newest_checkpoint(tmp_path):
    from lorap_dist.distributed.worker import resolve_resume_path

    for epoch in (1, 2):
        state, _, _ = trained_state(epoch)
        save_checkpoint(state, tmp_path / "run" / checkpoint_name(epoch))
    assert resolve_resume_path(tmp_path / "run" / checkpoint_name(2)).name == checkpoint_name(2)
    newest = tmp_path / "run" / checkpoint_name(2) / STATE_FILE
    newest.write_bytes(newest.read_bytes()[:-3])
    with pytest.warns(UserWarning, match="truncated"):
        assert resolve_resume_path(tmp_path / "run").name == checkpoint_name(1)
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        resolve_resume_path(tmp_path / "empty")


def test_a_restart_takes_a_newer_complete_checkpoint_than_ray_registered(tmp_path):
    from types import SimpleNamespace

    from lorap_dist.distributed.worker import newer_checkpoint_on_disk

    run = tmp_path / "run"
    for epoch in (5, 10):
        state, _, _ = trained_state(epoch)
        save_checkpoint(state, run / checkpoint_name(epoch))
    registered = SimpleNamespace(path=str(run / checkpoint_name(5)))
    assert newer_checkpoint_on_disk(registered, run) == run / checkpoint_name(10)
    newest = SimpleNamespace(path=str(run / checkpoint_name(10)))
    assert newer_checkpoint_on_disk(newest, run) is None  # Ray's is the newest: use it
    assert newer_checkpoint_on_disk(None, run) is None  # a fresh run resumes nothing
    damaged = run / checkpoint_name(10) / STATE_FILE
    damaged.write_bytes(damaged.read_bytes()[:-3])  # killed while writing: never chosen
    with pytest.warns(UserWarning, match="truncated"):
        assert newer_checkpoint_on_disk(registered, run) is None


def test_failure_message_names_the_last_good_checkpoint_and_the_resume_command(tmp_path):
    from lorap_dist.distributed.trainer import failure_message

    state, _, _ = trained_state(2)
    path = save_checkpoint(state, tmp_path / "run" / checkpoint_name(2))
    message = failure_message(RuntimeError("worker 1\ndied"), tmp_path / "run")
    assert "\n" not in message
    assert f"last good checkpoint is {path}: resume with `lorap train ... --resume {path}`" in (
        message
    )
    assert "no checkpoint was written" in failure_message(RuntimeError("x"), tmp_path / "none")


def test_a_checkpoint_cut_off_mid_write_is_never_chosen(tmp_path):
    state, _, _ = trained_state(1)
    good = save_checkpoint(state, tmp_path / "run" / checkpoint_name(1))
    partial = tmp_path / "run" / f".tmp-{checkpoint_name(2)}-0badf00d"  # killed before rename
    partial.mkdir()
    (partial / STATE_FILE).write_text("{")
    no_manifest = tmp_path / "run" / checkpoint_name(3)  # renamed by hand, never completed
    no_manifest.mkdir()
    with pytest.warns(UserWarning, match="not completely written"):
        assert latest_good_checkpoint(tmp_path / "run") == good


def test_rounding_and_norm_are_architecture_fields():
    lorap = {"model": {"arch": "gin", "norm": None}, "prompt": {"kind": "lorap"}}
    facts = architecture(lorap)
    assert (facts["model.norm"], facts["prompt.rounding"]) == ("batch", "twice")  # old default
    once = architecture(lorap | {"prompt": {"kind": "lorap", "rounding": "once"}})
    assert once["prompt.rounding"] == "once"
    assert architecture({"model": {"arch": "gcn", "norm": None}})["model.norm"] == "none"
    assert "prompt.rounding" not in architecture({"prompt": {"kind": "none"}})


def test_the_prompt_unit_is_an_architecture_field(tmp_path):
    """A P_B saved in steps read as values (or back) would be off by the step: refused."""
    value = {"model": {"arch": "gcn"}, "prompt": {"kind": "lorap"}}  # also: before the field
    step = {"model": {"arch": "gcn"}, "prompt": {"kind": "lorap", "unit": "step"}}
    assert architecture(value)["prompt.unit"] == "value"
    with pytest.raises(CheckpointError, match="expected 'step', checkpoint has 'value'"):
        check_architecture(architecture(value), architecture(step), tmp_path)
    check_architecture(architecture(step), architecture(step), tmp_path)
    assert "prompt.unit" not in architecture({"prompt": {"kind": "gpf"}})


def test_gpf_form_is_an_architecture_field(tmp_path):
    """A GPF checkpoint from before ``gpf_support`` (unscaled, every entry) is refused."""
    new = {"model": {"arch": "gcn"}, "prompt": {"kind": "gpf_lorap", "gpf_support": "nonzero"}}
    old = {"model": {"arch": "gcn"}, "prompt": {"kind": "gpf_lorap"}}
    assert architecture(old)["prompt.gpf_support"] == OLD_GPF
    for setting in ("nonzero", "all"):
        expected = architecture(new | {"prompt": new["prompt"] | {"gpf_support": setting}})
        with pytest.raises(CheckpointError, match="prompt.gpf_support"):
            check_architecture(architecture(old), expected, tmp_path)
    with pytest.raises(CheckpointError, match="expected 'all', checkpoint has 'nonzero'"):
        all_entries = architecture(new | {"prompt": new["prompt"] | {"gpf_support": "all"}})
        check_architecture(architecture(new), all_entries, tmp_path)
    assert "prompt.gpf_support" not in architecture({"prompt": {"kind": "lorap"}})


def test_optimizer_state_of_another_group_layout_is_refused_with_both_named(tmp_path):
    """A checkpoint from the one-group optimizer does not load into the three groups."""
    model = build_model(
        5, 3, ModelConfig(arch="gcn", hidden=4), PromptConfig(kind="lorap", k=2, r=1)
    )
    optimizer = build_optimizer(model, TrainConfig())
    old = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.randn(6, 5), torch.tensor([[0, 1, 2], [1, 2, 0]])).sum().backward()
    old.step()
    with pytest.raises(CheckpointError, match=r"unnamed \(\d+ tensors\).*backbone.*prompt"):
        load_optimizer_state(optimizer, old.state_dict(), tmp_path)
    assert optimizer.state_dict()["state"] == {}  # nothing half-loaded
    optimizer.step()
    again = build_optimizer(model, TrainConfig())
    load_optimizer_state(again, optimizer.state_dict(), tmp_path)
    first = next(iter(optimizer.state.values()))["exp_avg"]
    torch.testing.assert_close(next(iter(again.state.values()))["exp_avg"], first)


@pytest.mark.parametrize(
    "saved, warmup",
    [
        ({"epochs": 200, "prompt_warmup": None}, 50),  # the default, resolved
        ({"epochs": 10, "prompt_warmup": None}, 2),
        ({"epochs": 200, "prompt_warmup": 7}, 7),  # explicit
        ({"epochs": 200}, 0),  # written before the warm start: prompts trained from step 0
    ],
)
def test_the_saved_warm_start_is_resolved_as_its_run_trained(saved, warmup):
    assert saved_prompt_warmup({"train": saved}) == warmup


def test_a_resume_with_more_epochs_keeps_the_checkpoints_warm_start():
    saved = {"train": {"epochs": 200, "prompt_warmup": None}}
    extended = TrainConfig(epochs=400)
    assert extended.prompt_warmup_epochs == 100  # what the default alone would do
    keep_prompt_warmup(extended, saved, "ckpt")
    assert extended.prompt_warmup_epochs == 50
    explicit = TrainConfig(epochs=400, prompt_warmup=80)  # the user's choice is kept
    keep_prompt_warmup(explicit, saved, "ckpt")
    assert explicit.prompt_warmup_epochs == 80


@pytest.mark.parametrize(
    ("saved", "explicit", "resumed"),
    [
        ({}, None, False),  # written before the field: its run trained the prompts in search
        ({"prompt_after_search": None}, None, True),  # the default, resolved
        ({"prompt_after_search": False}, None, False),  # a saved choice survives a resume
        ({"prompt_after_search": True}, None, True),
        ({}, True, True),  # the user's explicit choice is kept
        ({"prompt_after_search": True}, False, False),
    ],
)
def test_a_resume_keeps_the_checkpoints_choice_of_waiting_for_the_search(saved, explicit, resumed):
    train = TrainConfig(epochs=200, prompt_after_search=explicit)
    keep_prompt_warmup(train, {"train": {"epochs": 200, "prompt_warmup": None, **saved}}, "ckpt")
    assert train.prompt_after_search is resumed
    assert train.prompts_wait_for_search is resumed


@pytest.mark.parametrize(
    ("saved", "explicit", "resumed"),
    [
        ({"prompt_lr_scale": 0.5}, None, 0.5),  # written before the field: its prompts'
        ({}, None, 0.1),  # rate, whatever it was (the old default, 0.1, where not saved)
        ({"prompt_tuning_lr_scale": None}, None, DEFAULT_TUNING_PROMPT_LR_SCALE),
        ({"prompt_tuning_lr_scale": 3.0}, None, 3.0),  # a saved choice survives a resume
        ({"prompt_lr_scale": 0.5}, 2.0, 2.0),  # the user's explicit choice is kept
    ],
)
def test_a_resume_tunes_the_prompts_at_the_rate_its_checkpoints_run_did(saved, explicit, resumed):
    train = TrainConfig(epochs=200, prompt_tuning_lr_scale=explicit)
    keep_prompt_warmup(train, {"train": {"epochs": 200, "prompt_warmup": None, **saved}}, "ckpt")
    assert train.tuning_prompt_lr_scale == resumed


@pytest.mark.parametrize(
    ("saved", "tuning", "explicit", "resumed"),
    [
        # the length its tuning state kept, whatever the default says now
        ({"prompt_tuning_epochs": None}, {"epochs": 100}, None, 100),
        ({"prompt_tuning_epochs": None}, {"epochs": 0}, None, 0),  # a model without prompts
        # written before checkpoints kept it: the default then, a quarter of its epochs
        ({"prompt_tuning_epochs": None}, {}, None, 50),
        ({"prompt_tuning_epochs": None}, None, None, 50),
        ({"prompt_tuning_epochs": 7}, None, None, 7),  # its explicit choice
        ({}, None, None, 0),  # written before prompt tuning: trained with the backbone
        ({"prompt_tuning_epochs": None}, {"epochs": 100}, 30, 30),  # the user's is kept
    ],
)
def test_a_resume_tunes_the_prompts_as_long_as_its_checkpoints_run_would(
    saved, tuning, explicit, resumed
):
    """Resumed with more epochs, a run that leaves ``train.prompt_tuning_epochs`` to the
    default keeps its checkpoint's phase length (half of 400 would be 200)."""
    train = TrainConfig(epochs=400, prompt_tuning_epochs=explicit)
    saved = {"train": {"epochs": 200, "prompt_warmup": None, **saved}}
    keep_prompt_warmup(train, saved, "ckpt", tuning)
    assert train.tuning_epochs == resumed


def test_a_checkpoints_tuning_state_keeps_the_phase_length_for_a_resume():
    from lorap_dist.distributed.resume import saved_prompt_tuning
    from lorap_dist.tracking import PromptTuning

    config = {"train": {"epochs": 200, "prompt_tuning_epochs": None}}
    assert saved_prompt_tuning(config, PromptTuning(epochs=100).state_dict()) == 100
    restored = PromptTuning(epochs=3)
    restored.load_state_dict(PromptTuning(epochs=100).state_dict())
    assert restored.epochs == 3  # loading the state leaves the configured length alone


def test_a_resume_too_short_for_the_saved_warm_start_says_what_to_set():
    saved = {"train": {"epochs": 200, "prompt_warmup": None}}
    with pytest.raises(CheckpointError, match=r"held still for 50 epochs.*train.epochs=40"):
        keep_prompt_warmup(TrainConfig(epochs=40), saved, "ckpt")


def prompt_tuning_checkpoint(tmp_path, tuning: dict | None, keep_best: bool, **resumed_train):
    """A checkpoint of a LoRAP GCN run with ``train.prompt_tuning_epochs: 2`` whose best
    epoch is 1, written after 2 epochs; inside the tuning phase when ``tuning`` is given,
    with its best model when ``keep_best``; and what the worker resumes into (the run's
    ``train`` section updated with ``resumed_train``): its model, optimizer and progress."""
    from lorap_dist.config import ExperimentConfig
    from lorap_dist.distributed.progress import Rank, RankProgress

    saved = ExperimentConfig.from_dict(
        {**CONFIG, "train": {"epochs": 2, "prompt_tuning_epochs": 2}}
    )
    train = {"epochs": 2, "prompt_tuning_epochs": 2} | resumed_train
    experiment = ExperimentConfig.from_dict({**CONFIG, "train": train})
    model = build_model(5, 3, experiment.model, experiment.prompt)
    optimizer = build_optimizer(model, experiment.train)
    extra = {"best": {"epoch": 1, "valid": 0.5, "test": 0.4}}
    state = TrainingState(
        model=model.state_dict(),
        optimizer=optimizer.state_dict(),
        config=saved.to_dict(),
        epoch=2,
        step=2,
        rng=[capture_rng()],
        dataset=DATASET,
        extra=extra | ({"tuning": tuning} if tuning else {}),
        best_model={k: v + 1 for k, v in model.state_dict().items()} if keep_best else {},
    )
    path = save_checkpoint(state, tmp_path / checkpoint_name(2))
    progress = RankProgress(Rank(0, 1, experiment, DATASET, 1), optimizer)
    return path, (model, optimizer, progress)


@pytest.fixture
def outside_ray_train(monkeypatch):
    """The worker's resume outside a Ray Train session: no checkpoint registered."""
    from lorap_dist.distributed import worker

    monkeypatch.setattr(worker.ray.train, "get_checkpoint", lambda: None)


def test_prompt_tuning_resumed_inside_the_phase_freezes_the_backbone_again(
    tmp_path, outside_ray_train, one_rank_group
):
    from lorap_dist.distributed.worker import restore_training

    before = {"epoch": 1, "valid": 0.5, "test": 0.4}
    path, args = prompt_tuning_checkpoint(
        tmp_path, {"start": 2, "before": before}, True, prompt_tuning_epochs=None, epochs=40
    )  # resumed under the default, which would be 20: the checkpoint's 2 are kept
    model, _, progress = args
    assert progress.tuning.epochs == 20
    epoch, step, _ = restore_training({"resume": str(path)}, *args)
    assert progress.train.prompt_tuning_epochs == progress.tuning.epochs == 2
    tuning = progress.tuning
    assert (epoch, step, tuning.start, tuning.before, tuning.end(40)) == (2, 2, 2, before, 4)
    assert progress.best.epoch == 1
    assert all(torch.equal(progress.best_state[k], v + 1) for k, v in model.state_dict().items())
    model.train()
    assert not model.training  # the backbone runs as in evaluation ...
    assert all(m.training for m in model.modules() if type(m).__name__ == "LoRAP")  # ... not these


def test_prompt_tuning_from_a_checkpoint_without_the_best_model_is_refused_naming_it(
    tmp_path, outside_ray_train, one_rank_group
):
    from lorap_dist.distributed.worker import restore_training

    path, args = prompt_tuning_checkpoint(tmp_path, None, keep_best=False)
    with pytest.raises(
        CheckpointError, match=r"holds no best model .*prompt_tuning_epochs=2"
    ) as info:
        restore_training({"resume": str(path)}, *args)
    assert str(path) in str(info.value)


def test_a_run_trained_together_resumed_under_the_default_keeps_training_together(
    tmp_path, outside_ray_train, one_rank_group
):
    """A checkpoint written before prompt tuning was the default (``0``) resumed by a config
    that leaves it to the default: the run goes on training the prompts with the backbone,
    and the worker's tuning phase agrees with the learning-rate schedule."""
    from lorap_dist.distributed.worker import restore_training

    path, args = prompt_tuning_checkpoint(
        tmp_path, None, False, prompt_tuning_epochs=None, epochs=8
    )
    saved = load_checkpoint(path)
    saved.config["train"]["prompt_tuning_epochs"] = 0
    path = save_checkpoint(saved, tmp_path / "joint" / checkpoint_name(2))
    progress = args[2]
    assert progress.train.tuning_epochs == progress.tuning.epochs == 4  # the default
    restore_training({"resume": str(path)}, *args)
    assert progress.train.tuning_epochs == progress.tuning.epochs == 0
