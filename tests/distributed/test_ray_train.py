"""Ray Train end to end on 2 CPU workers: bit-identical resume, a killed worker, bad datasets,
training and evaluation on integer rows.

One local Ray instance (2 CPUs, ``ray_cluster`` in conftest.py) serves the whole module.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch

from lorap_dist.config import ConfigError, DistConfig, ExperimentConfig
from lorap_dist.distributed.checkpoint import checkpoint_name, load_checkpoint
from lorap_dist.distributed.trainer import run_distributed, validate_dataset
from lorap_dist.graph.errors import DatasetError
from lorap_dist.testing.faults import KillOnce
from lorap_dist.testing.probes import RecordRngState

pytestmark = pytest.mark.slow


def experiment(path, epochs: int, **train) -> ExperimentConfig:
    return ExperimentConfig.from_dict(
        {
            "data": {"source": "dir", "path": str(path)},
            "model": {"arch": "gcn", "hidden": 8, "layers": 2, "dropout": 0.5},
            "prompt": {"kind": "lorap", "k": 4, "r": 2},
            "quant": {"scheme": "qat", "options": {"bits": 4}},
            "train": {"epochs": epochs, "lr": 0.01, "fanout": [4, 4], "batch_size": 16, **train},
        }
    )


def settings(tmp_path, name: str, **kwargs) -> DistConfig:
    return DistConfig(num_workers=2, storage_path=str(tmp_path / "runs"), name=name, **kwargs)


def final_state(result: dict):
    return load_checkpoint(result["checkpoint"])


def test_resumed_run_is_bit_identical(ray_cluster, tiny_dataset, tmp_path, straight_and_resumed):
    # The prompts train together with the backbone (train.prompt_tuning_epochs: 0), so a
    # finished run continues by raising train.epochs. Both legs leave the prompts' warm
    # start to the default, a quarter of train.epochs: 0 for the 2-epoch first leg. The
    # resumed leg extends the run to 4 epochs, where the default would be 1; it keeps the
    # checkpoint's 0 (and records it), so it equals a straight run told 0, whose prompt
    # trains in epoch 0 as the first leg's did.
    straight, resumed = straight_and_resumed(
        lambda epochs: experiment(tiny_dataset, epochs, prompt_tuning_epochs=0),
        tmp_path,
        straight_of=lambda epochs: experiment(tiny_dataset, epochs, prompt_warmup=0),
    )
    a, b = final_state(straight), final_state(resumed)
    assert b.config["train"]["prompt_warmup"] == 0  # recorded, for the next resume
    # the first epoch that trained the prompts comes back from the checkpoint, not epoch 2
    assert straight["prompt_start_epoch"] == resumed["prompt_start_epoch"] == 0
    # Torch's generator drives dropout and sampling; Ray's own code in the worker draws from
    # python's and numpy's global RNGs, so those are restored but not compared.
    assert [r["torch"] for r in a.rng] == [r["torch"] for r in b.rng]
    for key in ("loss", "valid_acc", "test_acc", "bytes_exchanged"):
        assert straight[key] == resumed[key], key
    assert straight["bytes_exchanged"] > 0
    assert 0.0 <= straight["test_acc"] <= 1.0


def test_ranks_draw_their_own_dropout_masks(ray_cluster, tiny_dataset, tmp_path):
    """The model is built from one seed on every rank, but training draws (dropout) from a
    generator of each rank's own: with one shared seed both ranks would hold the same
    generator state before every step and draw the same masks by position."""
    probe = RecordRngState(str(tmp_path))
    run_distributed(experiment(tiny_dataset, 1), settings(tmp_path, "rng"), step_hook=probe)
    assert probe.read(0, 0, 0) != probe.read(1, 0, 0)  # the ranks' streams differ ...
    assert probe.read(0, 0, 1) != probe.read(0, 0, 0)  # ... and a step draws from them


def test_killed_worker_resumes_from_last_checkpoint(
    ray_cluster, tiny_dataset, tmp_path, run_with_a_killed_worker
):
    # 3 epochs and, by default, 1 of prompt tuning (a quarter of them, at least 1)
    result = run_with_a_killed_worker(experiment(tiny_dataset, 3), tmp_path, epochs=4)
    assert result["checkpoint"].endswith(checkpoint_name(4))


def test_missing_dataset_fails_before_workers_start(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        run_distributed(experiment(tmp_path / "nowhere", 1), settings(tmp_path, "x"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="meta.json is missing"):
        validate_dataset(tmp_path / "empty", 2)


def test_partition_count_mismatch_fails_before_workers_start(tiny_dataset, tmp_path):
    with pytest.raises(DatasetError, match="num_parts=2 but dist.num_workers=3"):
        run_distributed(
            experiment(tiny_dataset, 1),
            DistConfig(num_workers=3, storage_path=str(tmp_path / "runs")),
        )


def test_step_cap_no_evaluation_and_memory_report(ray_cluster, tiny_dataset, tmp_path):
    capped = run_distributed(
        experiment(tiny_dataset, 2),
        settings(tmp_path, "capped", max_steps_per_epoch=1, eval_every=None),
    )
    assert capped["epochs"] == 2
    assert capped["steps"] == 2  # one step per epoch, not a full pass over the seeds
    assert capped["test_acc"] is None and capped["valid_acc"] is None
    assert capped["peak_rss_gib"] > 0
    assert capped["seeds_per_s"] > 0


def test_sage_on_int8_codes_trains_and_evaluates(ray_cluster, tiny_int8_dataset, tmp_path):
    """``dist.feature_rows: codes``: steps and layer-wise evaluation on the stored INT8 rows,
    with A2Q, whose idle first ``input`` point leaves DDP unused parameters every step."""
    data = experiment(tiny_int8_dataset, 8).to_dict()
    data["model"]["arch"] = "sage"
    # No prompt: the check is that training on codes learns; LoRAP on integer rows is checked
    # bit for bit in tests/nn/test_integer_rows.py. At lr 0.01 and 4 epochs A2Q INT4 had not
    # learned yet (training loss 2.0-2.8 against ln 4 = 1.39, best validation 0.20-0.46 over
    # seeds 0-3); at lr 0.05 and 8 epochs seeds 0-3 reach losses of 0.99-1.17 and best
    # validation accuracies of 0.50-0.68.
    data["prompt"] = {"kind": "none"}
    data["quant"] = {"scheme": "a2q", "options": {"bits": 4}}
    data["train"]["lr"] = 0.05
    result = run_distributed(
        ExperimentConfig.from_dict(data), settings(tmp_path, "codes", feature_rows="codes")
    )
    assert (result["epochs"], result["steps"]) == (8, 32)
    assert result["bytes_exchanged"] > 0
    assert result["loss"] < math.log(4)  # below guessing among 4 planted classes
    assert result["best_valid_acc"] > 0.4  # chance is 0.25


def test_mixq_freezing_mid_run_rewraps_ddp(ray_cluster, tiny_dataset, tmp_path):
    """MixQ searches for the first epoch and then freezes: its logits take no gradient from
    the second epoch on. DDP was set up while every parameter had one; unless it is set up
    again, the second epoch's steps fail inside DDP ("Expected to have finished reduction")."""
    data = experiment(tiny_dataset, 2).to_dict()
    data["quant"] = {"scheme": "mixq", "options": {"bits": 4, "search_fraction": 0.5}}
    result = run_distributed(ExperimentConfig.from_dict(data), settings(tmp_path, "mixq"))
    # the run's 2 epochs, then 1 of prompt tuning (the default), DDP set up again for it
    assert result["epochs"] == 3 and result["steps"] > 0
    assert 0 < result["best_valid_acc"] <= 1


@pytest.mark.parametrize("wait", [True, False])
def test_a_distributed_mixq_run_holds_its_prompts_until_the_search_freezes(
    ray_cluster, tiny_dataset, tmp_path, wait
):
    """The worker's learning-rate schedule knows whether MixQ still searches: in a 1-epoch
    run whose search freezes at the end of that epoch, the prompts (``P_B`` starts at zero)
    do not move with ``train.prompt_after_search`` and do without it; the run says so as
    ``lorap train`` does."""
    data = experiment(tiny_dataset, 1, prompt_warmup=0, prompt_after_search=wait).to_dict()
    data["quant"] = {"scheme": "mixq", "options": {"bits": 4, "search_fraction": 0.5}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_distributed(
            ExperimentConfig.from_dict(data), settings(tmp_path, f"wait-{wait}")
        )
    assert result["prompt_start_epoch"] == (None if wait else 0)
    assert result["prompt_trained"] is (not wait)  # the best epoch, 0, trained them or not
    if wait:
        (note,) = result["warnings"]
        assert note.startswith("the prompts never trained") and "bit-width search" in note
        assert note in [str(w.message) for w in caught]
    else:
        assert result["warnings"] == []
    state = final_state(result)
    selected = [value for key, value in state.model.items() if key.endswith(".selected")]
    assert selected and all(int(value) >= 0 for value in selected)  # frozen after epoch 0
    p_b = [value for key, value in state.model.items() if key.endswith("p_b")]
    assert len(p_b) == 2  # one prompt per layer
    assert any(bool(value.abs().sum() > 0) for value in p_b) is not wait


def test_patience_stops_every_rank_after_the_same_epoch(ray_cluster, tiny_dataset, tmp_path):
    """``train.patience`` stops a distributed run as it stops ``lorap train``. A float model
    at a learning rate of 1e-9 scores the same every epoch, so its best epoch is the first
    and with patience 2 the run ends after epoch 2 (0-based) of 10, with a checkpoint there;
    a rank that went on alone would hang its peer's next collective. So does a prompt
    tuning phase."""
    data = experiment(tiny_dataset, 10).to_dict()
    data["prompt"] = {"kind": "none"}
    data["quant"] = {"scheme": "none"}
    data["train"] |= {"lr": 1e-9, "patience": 2}
    result = run_distributed(ExperimentConfig.from_dict(data), settings(tmp_path, "patience"))
    assert result["stopped_early"] is True
    assert (result["epochs"], result["best_epoch"]) == (3, 0)
    assert result["best_valid_acc"] == result["valid_acc"]  # nothing changed since epoch 0
    assert load_checkpoint(result["checkpoint"]).epoch == 3

    data["train"]["patience"] = 0  # never stops early
    data["train"]["epochs"] = 4
    result = run_distributed(ExperimentConfig.from_dict(data), settings(tmp_path, "no-patience"))
    assert result["stopped_early"] is False
    assert (result["epochs"], result["best_epoch"]) == (4, 0)

    # Prompt tuning stops on the same patience: the run stops after epoch 2, the phase
    # begins at epoch 3, and its prompt (as still as the rest) never wins, so it ends after
    # epoch 4 instead of running its 10 epochs.
    data["prompt"] = {"kind": "lorap", "k": 4, "r": 2}
    data["train"] |= {"patience": 2, "epochs": 10, "prompt_tuning_epochs": 10}
    result = run_distributed(ExperimentConfig.from_dict(data), settings(tmp_path, "tuning"))
    assert result["stopped_early"] is True and result["tuning_start_epoch"] == 3
    assert (result["epochs"], result["best_epoch"]) == (5, 0)
    assert load_checkpoint(result["checkpoint"]).epoch == 5


def test_dist_config_rejects_bad_caps():
    with pytest.raises(ConfigError, match="max_steps_per_epoch must be >= 1"):
        DistConfig(max_steps_per_epoch=0)
    with pytest.raises(ConfigError, match="eval_every must be >= 0"):
        DistConfig(eval_every=-1)


def test_without_restarts_a_killed_worker_ends_in_one_line_naming_the_checkpoint(
    ray_cluster, tiny_dataset, tmp_path
):
    from lorap_dist.distributed.trainer import DistributedRunError

    marker = tmp_path / "killed"
    with pytest.raises(DistributedRunError) as info:
        run_distributed(
            experiment(tiny_dataset, 3),
            settings(tmp_path, "no-retry", max_failures=0),
            step_hook=KillOnce(rank=1, epoch=1, step=1, marker=str(marker)),
        )
    assert marker.exists()
    message = str(info.value)
    assert "\n" not in message
    assert f"--resume {tmp_path / 'runs' / 'no-retry' / checkpoint_name(1)}" in message


def test_prompt_tuning_resumed_after_a_killed_worker_ends_as_the_uninterrupted_run(
    ray_cluster, tiny_dataset, tmp_path
):
    """``train.prompt_tuning_epochs`` on 2 workers: 2 epochs of QAT INT4 with the prompts
    held still, then 3 in which only the prompts train on the run's best model. Rank 1 is
    killed in the second tuning epoch; restarted from the checkpoint inside the phase, the
    run ends with the uninterrupted run's weights, best model and scores, and its backbone
    is the one the phase began from."""
    config = experiment(tiny_dataset, 2, prompt_tuning_epochs=3)
    straight = run_distributed(config, settings(tmp_path, "tuned"))
    marker = tmp_path / "killed"
    killed = run_distributed(
        config,
        settings(tmp_path, "tuned-killed", max_failures=1),
        step_hook=KillOnce(rank=1, epoch=3, step=1, marker=str(marker)),
    )
    assert marker.exists()  # the worker did die, inside the phase
    assert straight["epochs"] == killed["epochs"] == 5
    assert straight["tuning_start_epoch"] == killed["tuning_start_epoch"] == 2
    assert straight["prompt_start_epoch"] == 2  # held still through the run
    before = straight["before_tuning"]
    assert before == killed["before_tuning"] and before["epoch"] in (0, 1)
    assert straight["best_valid_acc"] >= before["valid"]
    for key in ("loss", "valid_acc", "test_acc", "best_valid_acc", "best_test_acc", "best_epoch"):
        assert straight[key] == killed[key], key
    a, b = final_state(straight), final_state(killed)
    for key in a.model:
        assert torch.equal(a.model[key], b.model[key]), key
        assert torch.equal(a.best_model[key], b.best_model[key]), key
    # The checkpoint written as the phase began holds the run's best model ...
    (began,) = Path(straight["run_dir"]).rglob(checkpoint_name(2))
    start = load_checkpoint(began)
    assert start.best_model.keys() == start.model.keys()
    assert all(torch.equal(start.model[key], start.best_model[key]) for key in start.model)
    # ... and only its prompts moved since: weights, ranges and steps stayed.
    prompt = {key for key in start.model if ".lorap." in key}
    assert prompt
    for key in start.model.keys() - prompt:
        assert torch.equal(a.model[key], start.model[key]), key
    assert any(not torch.equal(a.model[key], start.model[key]) for key in prompt)
