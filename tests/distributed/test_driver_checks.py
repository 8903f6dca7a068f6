"""A distributed run checks what it can in the driver, before Ray or any worker starts."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from lorap_dist.config import ConfigError, DistConfig, ExperimentConfig
from lorap_dist.distributed import trainer
from lorap_dist.distributed.checkpoint import (
    STATE_FILE,
    CheckpointError,
    TrainingState,
    capture_rng,
    checkpoint_name,
    save_checkpoint,
)


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


def test_prompt_tuning_without_evaluation_fails_in_the_driver(tiny_dataset, tmp_path, no_ray):
    """Prompt tuning starts from the best-validation model: a run that never evaluates
    (``dist.eval_every: null``) has none."""
    data = experiment(tiny_dataset, [4, 4]).to_dict()
    data["train"]["prompt_tuning_epochs"] = 3
    with pytest.raises(ConfigError, match=r"prompt_tuning_epochs=3 .* dist.eval_every is null"):
        trainer.run_distributed(
            ExperimentConfig.from_dict(data),
            DistConfig(num_workers=2, storage_path=str(tmp_path), eval_every=None),
        )


def test_prompt_tuning_without_evaluation_is_no_error_without_prompts(
    tiny_dataset, tmp_path, monkeypatch
):
    """A model without prompts has nothing to tune, so ``train.prompt_tuning_epochs`` and a
    run that never evaluates do not clash: the driver goes on to start the run."""

    class Started(Exception):
        pass

    def start(*args, **kwargs):
        raise Started

    monkeypatch.setattr(trainer, "build_trainer", start)
    data = experiment(tiny_dataset, [4, 4]).to_dict()
    data["train"]["prompt_tuning_epochs"] = 3
    data["prompt"] = {"kind": "none"}
    with pytest.raises(Started):
        trainer.run_distributed(
            ExperimentConfig.from_dict(data),
            DistConfig(num_workers=2, storage_path=str(tmp_path), eval_every=None),
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


def finished_checkpoint(tmp_path, config: dict, epoch: int, extra: dict) -> Path:
    model = torch.nn.Linear(3, 2)
    state = TrainingState(
        model=model.state_dict(),
        optimizer=torch.optim.Adam(model.parameters()).state_dict(),
        config=config,
        epoch=epoch,
        step=epoch,
        rng=[capture_rng(), capture_rng()],
        dataset={},
        extra=extra,
    )
    return save_checkpoint(state, tmp_path / "run" / checkpoint_name(epoch))


def resumed(data: dict, path: Path, tmp_path) -> None:
    trainer.run_distributed(
        ExperimentConfig.from_dict(data),
        DistConfig(num_workers=2, storage_path=str(tmp_path)),
        resume=path,
    )


def test_resuming_a_run_whose_prompt_tuning_ended_fails_in_the_driver_saying_what_to_raise(
    tiny_dataset, tmp_path, no_ray
):
    """By default a 2-epoch run tunes its prompts for 1 epoch after them; its last
    checkpoint, after 3 epochs, leaves nothing to train unless the tuning is lengthened."""
    data = experiment(tiny_dataset, [4, 4]).to_dict()
    before = {"epoch": 1, "valid": 0.5, "test": 0.5}
    path = finished_checkpoint(tmp_path, data, 3, {"tuning": {"start": 2, "before": before}})
    with pytest.raises(
        CheckpointError,
        match=r"taken after 3 epochs, and this run would end after 3: its prompt tuning, from "
        r"epoch 2, ends there with train.prompt_tuning_epochs=1; raise that",
    ):
        resumed(data, path, tmp_path)
    data["train"]["prompt_tuning_epochs"] = 3
    with pytest.raises(AssertionError, match="the driver started Ray"):
        resumed(data, path, tmp_path)


def test_resuming_a_finished_run_trained_together_fails_in_the_driver_unless_extended(
    tiny_dataset, tmp_path, no_ray
):
    """A checkpoint whose run trained the prompts with the backbone (written with
    ``prompt_tuning_epochs: 0``, or before it existed) keeps doing so under the default;
    after its last epoch only more ``train.epochs`` leave something to train."""
    data = experiment(tiny_dataset, [4, 4]).to_dict()
    saved = json.loads(json.dumps(data))
    del saved["train"]["prompt_tuning_epochs"]  # written before the field existed
    path = finished_checkpoint(tmp_path, saved, 2, {})
    with pytest.raises(CheckpointError, match=r"train.epochs=2 ends there; raise it to train on"):
        resumed(data, path, tmp_path)
    data["train"]["epochs"] = 4
    with pytest.raises(AssertionError, match="the driver started Ray"):
        resumed(data, path, tmp_path)


def codes_experiment(path, arch: str = "sage") -> ExperimentConfig:
    data = experiment(path, [4, 4]).to_dict()
    data["model"]["arch"] = arch
    return ExperimentConfig.from_dict(data)


def test_codes_without_an_integer_payload_fail_in_the_driver(
    tiny_dataset, tiny_int8_dataset, tmp_path, no_ray
):
    settings = DistConfig(num_workers=2, storage_path=str(tmp_path), feature_rows="codes")
    with pytest.raises(
        ConfigError,
        match=r"dist.feature_rows='codes' needs rows that travel as integer codes, but .* "
        r"stores fp32 features and dist.exchange_bits is null .*; set dist.exchange_bits: 8 "
        r"or 4, prepare the dataset with --features int8, or set dist.feature_rows: float.",
    ):
        trainer.run_distributed(codes_experiment(tiny_dataset), settings)
    settings.exchange_bits = 4  # rows re-quantized at the sender: codes
    for path in (tiny_dataset, tiny_int8_dataset):
        with pytest.raises(AssertionError, match="the driver started Ray"):
            trainer.run_distributed(codes_experiment(path), settings)
    settings.exchange_bits = None  # codes as stored
    with pytest.raises(AssertionError, match="the driver started Ray"):
        trainer.run_distributed(codes_experiment(tiny_int8_dataset), settings)


def test_codes_with_a_gcn_fail_in_the_driver_when_dist_is_given_apart(
    tiny_int8_dataset, tmp_path, no_ray
):
    with pytest.raises(ConfigError, match="dist.feature_rows='codes' with model.arch='gcn'"):
        trainer.run_distributed(
            codes_experiment(tiny_int8_dataset, "gcn"),
            DistConfig(num_workers=2, storage_path=str(tmp_path), feature_rows="codes"),
        )


HOLD_LOCK = """
import fcntl, sys, time
handle = open(sys.argv[1], "a+")
fcntl.flock(handle, fcntl.LOCK_EX)
handle.seek(0); handle.truncate(); handle.write("process of the other run"); handle.flush()
print("locked", flush=True)
time.sleep(60)
"""


def test_two_runs_with_the_same_name_and_storage_are_refused(tmp_path):
    import subprocess
    import sys

    run_dir = tmp_path / "runs" / "job-1"
    run_dir.mkdir(parents=True)
    other = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(run_dir / trainer.LOCK_FILE)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert other.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=r"another run \(process of the other run\)"):
            with trainer.run_lock(run_dir):
                pass
    finally:
        other.kill()
        other.wait()
    with trainer.run_lock(run_dir):  # the other run was killed: its lock went with it
        with pytest.raises(ConfigError, match=r"another run \(process \d+ on"):
            with trainer.run_lock(run_dir):  # and this one holds it now
                pass
    with trainer.run_lock(run_dir):  # a finished run's name can be continued
        pass


def test_a_full_disk_while_checkpointing_leaves_nothing_half_written(tmp_path, monkeypatch):
    import errno

    from lorap_dist.distributed import checkpoint

    model = torch.nn.Linear(3, 2)
    state = TrainingState(
        model=model.state_dict(),
        optimizer=torch.optim.Adam(model.parameters()).state_dict(),
        config={},
        epoch=1,
        step=1,
        rng=[capture_rng()],
        dataset={},
    )
    good = save_checkpoint(state, tmp_path / "run" / checkpoint_name(1))
    real = checkpoint._write_synced

    def full_after_first(path, data):
        if path.name == checkpoint.STATE_FILE:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(checkpoint, "_write_synced", full_after_first)
    with pytest.raises(CheckpointError, match=r"no space left on the device.*earlier checkpoints"):
        save_checkpoint(state, tmp_path / "run" / checkpoint_name(2))
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [checkpoint_name(1)]
    assert checkpoint.latest_good_checkpoint(tmp_path / "run") == good


def test_remote_storage_goes_to_ray_as_given(tiny_dataset, tmp_path, monkeypatch):
    """An ``s3://`` storage path must reach Ray Train as the URI, not as a local folder named
    ``s3:`` under the working directory; a local path is made absolute; a URI has no local
    run directory to lock."""
    from ray.train import RunConfig

    seen = {}

    def capture(*args, run_config: RunConfig, **kwargs):
        seen["storage_path"] = run_config.storage_path

    import ray.train.torch

    monkeypatch.setattr(ray.train.torch, "TorchTrainer", capture)
    monkeypatch.chdir(tmp_path)
    remote = DistConfig(num_workers=2, storage_path="s3://bucket/runs")
    trainer.build_trainer(experiment(tiny_dataset, [4, 4]), remote, name="r")
    assert seen["storage_path"] == "s3://bucket/runs"
    assert remote.remote_storage and trainer._local_run_dir(remote, "r") is None
    with pytest.raises(ValueError, match="is a URI, not a path on this machine"):
        _ = remote.storage_dir
    assert DistConfig(storage_path=Path("runs")).storage_uri == str(tmp_path.resolve() / "runs")
    local = DistConfig(num_workers=2, storage_path="runs")
    trainer.build_trainer(experiment(tiny_dataset, [4, 4]), local, name="r")
    assert seen["storage_path"] == str(tmp_path.resolve() / "runs")
    assert trainer._local_run_dir(local, "r") == tmp_path.resolve() / "runs" / "r"


def test_workers_start_with_a_thread_per_cpu_and_sleeping_idle_threads(monkeypatch, tiny_dataset):
    from ray.train import RunConfig

    seen = {}

    def capture(*args, run_config: RunConfig, **kwargs):
        seen["env"] = run_config.worker_runtime_env["env_vars"]

    import ray.train.torch

    monkeypatch.setattr(ray.train.torch, "TorchTrainer", capture)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    settings = DistConfig(num_workers=2, cpus_per_worker=3, storage_path="s3://bucket/runs")
    trainer.build_trainer(experiment(tiny_dataset, [4, 4]), settings, name="r")
    assert seen["env"] == {"OMP_NUM_THREADS": "3", "OMP_WAIT_POLICY": "PASSIVE"}
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the user's choice is passed on
    trainer.build_trainer(experiment(tiny_dataset, [4, 4]), settings, name="r")
    assert seen["env"]["OMP_WAIT_POLICY"] == "ACTIVE"


def test_the_controller_polls_short_epochs_often_and_a_users_interval_wins(monkeypatch):
    """Ray Train's controller collects one epoch report per poll (every 2 s by Ray's
    default); the driver shortens the interval for the run, through the variable Ray Train
    itself passes on to its controller, and leaves no trace after it."""
    from ray.train.v2._internal.constants import get_env_vars_to_propagate

    key = trainer.CONTROLLER_POLL_INTERVAL
    monkeypatch.delenv(key, raising=False)
    assert trainer.poll_interval(2) == pytest.approx(0.1)
    assert trainer.poll_interval(8) == pytest.approx(0.4)
    assert trainer.poll_interval(1000) == trainer.RAY_POLL_INTERVAL_S
    with trainer.controller_polling(2):
        assert get_env_vars_to_propagate()[key] == "0.1"
    assert key not in os.environ
    monkeypatch.setenv(key, "1.5")
    with trainer.controller_polling(2):
        assert get_env_vars_to_propagate()[key] == "1.5"
    assert os.environ[key] == "1.5"


class _Fitted(Exception):
    """Raised by a stand-in trainer's ``fit`` once it has seen the environment."""


def _trainer_seeing_the_interval(seen: dict):
    class Stand_in:
        run_config = type("RunConfig", (), {"callbacks": None})()

        def fit(self):
            seen["interval"] = os.environ.get(trainer.CONTROLLER_POLL_INTERVAL)
            raise _Fitted

    return lambda *args, **kwargs: Stand_in()


def test_lorap_train_and_tune_trials_fit_under_the_short_interval(
    monkeypatch, tiny_dataset, tmp_path
):
    import ray.tune
    import ray.tune.integration.ray_train

    from lorap_dist.tune import trial

    monkeypatch.delenv(trainer.CONTROLLER_POLL_INTERVAL, raising=False)
    seen: dict = {}
    monkeypatch.setattr(trainer, "build_trainer", _trainer_seeing_the_interval(seen))
    exp = experiment(tiny_dataset, [4, 4])
    settings = DistConfig(num_workers=2, storage_path=str(tmp_path / "runs"))
    with pytest.raises(_Fitted):
        trainer.run_distributed(exp, settings)
    assert seen.pop("interval") == "0.1"
    monkeypatch.setattr(ray.tune, "report", lambda metrics: None)
    monkeypatch.setattr(ray.tune.integration.ray_train, "TuneReportCallback", lambda: "tune-report")
    exp = dataclasses.replace(exp, dist=settings)
    with pytest.raises(_Fitted):
        trial._train_distributed(exp, "trial-0")
    assert seen.pop("interval") == "0.1"
    assert trainer.CONTROLLER_POLL_INTERVAL not in os.environ
