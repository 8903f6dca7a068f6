"""A distributed run checks what it can in the driver, before Ray or any worker starts."""

from __future__ import annotations

import pytest
import torch

from lorap_dist.config import ConfigError, ExperimentConfig
from lorap_dist.distributed import trainer
from lorap_dist.distributed.checkpoint import (
    STATE_FILE,
    CheckpointError,
    TrainingState,
    capture_rng,
    checkpoint_name,
    save_checkpoint,
)
from lorap_dist.distributed.config import DistConfig


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if the run gets as far as building the Ray trainer."""

    def refuse(*args, **kwargs):
        raise AssertionError("the driver started Ray before checking its input")

    monkeypatch.setattr(trainer, "build_trainer", refuse)


def experiment(path, fanout) -> ExperimentConfig:
    return ExperimentConfig.from_dict(
        {
            "data": {"source": "dir", "path": str(path)},
            "model": {"hidden": 8, "layers": 2},
            "train": {"epochs": 2, "fanout": fanout},
        }
    )


def test_a_fanout_longer_than_the_model_fails_in_the_driver(tiny_dataset, tmp_path, no_ray):
    with pytest.raises(ConfigError, match=r"train.fanout=\(4, 4, 4\) needs one entry per layer"):
        trainer.run_distributed(
            experiment(tiny_dataset, [4, 4, 4]),
            DistConfig(num_workers=2, storage_path=str(tmp_path)),
        )


def test_a_truncated_checkpoint_named_in_resume_fails_in_the_driver(tiny_dataset, tmp_path, no_ray):
    model = torch.nn.Linear(3, 2)
    state = TrainingState(
        model=model.state_dict(),
        optimizer=torch.optim.Adam(model.parameters()).state_dict(),
        config=experiment(tiny_dataset, [4, 4]).to_dict(),
        epoch=1,
        step=1,
        rng=[capture_rng(), capture_rng()],
        dataset={},
    )
    path = save_checkpoint(state, tmp_path / "run" / checkpoint_name(1))
    (path / STATE_FILE).write_bytes((path / STATE_FILE).read_bytes()[:-5])
    with pytest.raises(CheckpointError, match=r"truncated or damaged.*earlier checkpoint"):
        trainer.run_distributed(
            experiment(tiny_dataset, [4, 4]),
            DistConfig(num_workers=2, storage_path=str(tmp_path)),
            resume=path,
        )
