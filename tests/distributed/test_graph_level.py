"""Graph-level training on 2 Ray Train workers: data parallel over graphs, a resumed run
equal to an uninterrupted one, a killed worker, and the checks made before any worker.

One local Ray instance (2 CPUs, ``ray_cluster`` in conftest.py) serves the whole module.
"""

from __future__ import annotations

import pytest
import torch

from lorap_dist.config import ConfigError, DistConfig, ExperimentConfig
from lorap_dist.distributed.checkpoint import checkpoint_name, load_checkpoint
from lorap_dist.distributed.graph_worker import rank_share
from lorap_dist.distributed.trainer import run_distributed
from lorap_dist.graph.errors import DatasetError
from lorap_dist.testing.probes import RecordRngState
from lorap_dist.testing.tu_layout import two_shapes, write_tu_dataset


@pytest.fixture(scope="module")
def tu_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tu")
    write_tu_dataset(root, "SHAPES", two_shapes(40, seed=1))
    return root


def experiment(root, epochs: int, **train) -> ExperimentConfig:
    return ExperimentConfig.from_dict(
        {
            "data": {"source": "tu", "name": "SHAPES", "root": str(root), "folds": 4},
            "model": {"arch": "gin", "hidden": 8, "layers": 2, "readout": "mean"},
            "prompt": {"kind": "lorap", "k": 2, "r": 2},
            "quant": {"scheme": "degree_quant", "options": {"bits": 4}},
            "train": {"epochs": epochs, "lr": 0.01, "batch_size": 8, **train},
        }
    )


def settings(tmp_path, name: str, **kwargs) -> DistConfig:
    return DistConfig(num_workers=2, storage_path=str(tmp_path / "runs"), name=name, **kwargs)


def test_ranks_share_each_epochs_graphs_without_overlap():
    train = torch.arange(100, 123)  # 23 graphs, 2 ranks: 11 each, one waits
    shares = [rank_share(train, seed=3, epoch=5, rank=r, world_size=2) for r in range(2)]
    assert shares[0].numel() == shares[1].numel() == 11
    assert not set(shares[0].tolist()) & set(shares[1].tolist())
    assert set(torch.cat(shares).tolist()) <= set(train.tolist())
    assert torch.equal(shares[0], rank_share(train, 3, 5, 0, 2))  # the same on every call
    assert not torch.equal(shares[0], rank_share(train, 3, 6, 0, 2))  # a new epoch, new order


@pytest.mark.slow
def test_graph_level_resumed_run_equals_the_uninterrupted_one(
    ray_cluster, tu_root, tmp_path, straight_and_resumed
):
    # the resumed leg extends `epochs` and keeps its checkpoint's warm start (see
    # test_ray_train): 0, the default for the 2-epoch first leg
    straight, resumed = straight_and_resumed(
        lambda epochs: experiment(tu_root, epochs, prompt_tuning_epochs=0),
        tmp_path,
        straight_of=lambda epochs: experiment(tu_root, epochs, prompt_warmup=0),
    )
    assert load_checkpoint(resumed["checkpoint"]).config["train"]["prompt_warmup"] == 0
    assert straight["prompt_start_epoch"] == resumed["prompt_start_epoch"] == 0
    # 20 training graphs of 40 (4 folds: test, valid, 2 train), 10 per rank, batches of
    # 8 / 2 = 4 graphs per rank: 3 steps per epoch
    assert straight["steps"] == 12
    for key in ("loss", "valid_acc", "test_acc", "best_valid_acc"):
        assert straight[key] == resumed[key], key
    assert 0.0 <= straight["test_acc"] <= 1.0 and straight["seeds_per_s"] > 0
    facts = load_checkpoint(straight["checkpoint"]).dataset
    assert facts == {"num_features": 2, "num_classes": 2, "num_graphs": 40}


def test_graph_level_ranks_draw_their_own_dropout_masks(ray_cluster, tu_root, tmp_path):
    """As node-level runs do: one seed builds the model, each rank's own stream trains it."""
    probe = RecordRngState(str(tmp_path))
    run_distributed(experiment(tu_root, 1), settings(tmp_path, "rng"), step_hook=probe)
    assert probe.read(0, 0, 0) != probe.read(1, 0, 0)
    assert probe.read(0, 0, 1) != probe.read(0, 0, 0)


def test_graph_level_patience_stops_the_run(ray_cluster, tu_root, tmp_path):
    """Graph-level runs stop on ``train.patience`` too: a float model that does not move
    (learning rate 1e-9) keeps its first epoch as the best and stops after epoch 1."""
    data = experiment(tu_root, 10, lr=1e-9, patience=1).to_dict()
    data["prompt"] = {"kind": "none"}
    data["quant"] = {"scheme": "none"}
    result = run_distributed(ExperimentConfig.from_dict(data), settings(tmp_path, "patience"))
    assert result["stopped_early"] is True
    assert (result["epochs"], result["best_epoch"]) == (2, 0)
    assert load_checkpoint(result["checkpoint"]).epoch == 2


@pytest.mark.slow
def test_graph_level_killed_worker_resumes_from_its_checkpoint(
    ray_cluster, tu_root, tmp_path, run_with_a_killed_worker
):
    # 3 epochs and, by default, 1 of prompt tuning
    result = run_with_a_killed_worker(experiment(tu_root, 3), tmp_path, epochs=4)
    assert result["checkpoint"].endswith(checkpoint_name(4))


def test_graph_level_errors_come_before_any_worker(tu_root, tmp_path):
    with pytest.raises(ConfigError, match="graph-level training batches whole graphs"):
        run_distributed(experiment(tu_root, 1, fanout=[3, 3]), settings(tmp_path, "x"))
    missing = experiment(tu_root, 1)
    missing.data.name = "ABSENT"
    with pytest.raises(DatasetError, match="ABSENT_A.txt"):
        run_distributed(missing, settings(tmp_path, "y"))


@pytest.mark.slow
def test_graph_level_prompt_tuning_resumed_inside_the_phase_ends_as_the_uninterrupted_run(
    ray_cluster, tu_root, tmp_path
):
    """``train.prompt_tuning_epochs`` in a graph-level run (Degree-Quant INT4, batch-norm
    statistics and protection masks in play): 2 epochs, then 2 of prompt tuning in which
    the backbone stays the best model's; ``--resume`` from the checkpoint after the first
    tuning epoch ends where the uninterrupted run does."""
    config = experiment(tu_root, 2, prompt_tuning_epochs=2)
    straight = run_distributed(config, settings(tmp_path, "tuned"))
    assert straight["epochs"] == 4 and straight["tuning_start_epoch"] == 2
    assert straight["before_tuning"]["epoch"] in (0, 1)
    (inside,) = (tmp_path / "runs").rglob(checkpoint_name(3))
    resumed = run_distributed(config, settings(tmp_path, "resumed"), resume=inside)
    for key in ("epochs", "loss", "valid_acc", "best_valid_acc", "best_epoch", "before_tuning"):
        assert straight[key] == resumed[key], key
    a, b = load_checkpoint(straight["checkpoint"]), load_checkpoint(resumed["checkpoint"])
    start = load_checkpoint(next((tmp_path / "runs" / "tuned").rglob(checkpoint_name(2))))
    prompt = {key for key in a.model if ".lorap." in key}
    assert prompt
    for key in a.model:
        assert torch.equal(a.model[key], b.model[key]), key
        if key not in prompt:  # weights, ranges, batch-norm statistics: the best model's
            assert torch.equal(a.model[key], start.best_model[key]), key
