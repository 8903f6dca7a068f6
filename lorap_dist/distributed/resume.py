"""What a resumed run keeps from its checkpoint where its own config leaves it to the default.

A default that depends on ``train.epochs`` (the prompts' warm start, prompt tuning's length)
would otherwise move when a run is resumed with more epochs, and the resumed run would no
longer be the one it continues; a default that changed since the checkpoint was written
(prompt tuning, waiting for MixQ's search) would change how its prompts train halfway. The
driver (:func:`lorap_dist.distributed.trainer.check_epochs_left`) and every worker
(:func:`lorap_dist.distributed.worker.restore_training`) apply the same rules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorap_dist.config import TrainConfig
from lorap_dist.distributed.checkpoint import CheckpointError


def saved_prompt_warmup(config: dict[str, Any]) -> int:
    """The epochs a checkpoint's run held its prompts still (``train.prompt_warmup``,
    resolved): its explicit value, a quarter of its ``train.epochs`` where it was ``None``
    (the default), and ``0`` where the field is missing (written before the warm start
    existed, when prompts trained from the first step)."""
    train = config.get("train", {})
    if "prompt_warmup" not in train:
        return 0
    fields = {key: train[key] for key in ("epochs", "prompt_warmup") if key in train}
    return TrainConfig(**fields).prompt_warmup_epochs


#: ``train.prompt_tuning_epochs: null`` resolved to ``epochs // LEGACY_TUNING_DIVISOR`` (at
#: least 1) before checkpoints kept the phase's length, when the default was a quarter.
LEGACY_TUNING_DIVISOR = 4


def saved_prompt_tuning(config: dict[str, Any], tuning: dict[str, Any] | None = None) -> int:
    """The epochs of prompt tuning a checkpoint's run was set to (``train.tuning_epochs``,
    resolved): the length its tuning state kept (``tuning``, the checkpoint's
    ``extra["tuning"]``); in a checkpoint written before it kept one, its explicit
    ``train.prompt_tuning_epochs``, a quarter of its ``train.epochs`` (at least 1) where
    that was ``None`` (the default then; ``0`` with ``train.prompt_warmup`` set), and ``0``
    where the field is missing (written before prompt tuning was the default)."""
    if tuning is not None and "epochs" in tuning:
        return int(tuning["epochs"])
    train = config.get("train", {})
    if "prompt_tuning_epochs" not in train:
        return 0
    if train["prompt_tuning_epochs"] is not None:
        return int(train["prompt_tuning_epochs"])
    if train.get("prompt_warmup") is not None:
        return 0
    return max(1, train.get("epochs", TrainConfig.epochs) // LEGACY_TUNING_DIVISOR)


def keep_prompt_warmup(
    train: TrainConfig,
    saved: dict[str, Any],
    where: Path | str,
    tuning: dict[str, Any] | None = None,
) -> None:
    """Resume under the warm start the checkpoint's run began with.

    ``train.prompt_warmup: null`` holds the prompts still for a quarter of ``train.epochs``,
    so a run resumed with more epochs would otherwise move its warm start after the fact
    (the prompts of a 200-epoch run, released at epoch 50, would freeze again until 100 when
    resumed with 400) and no longer be the run it continues. Where ``train`` leaves the field
    to the default, it is set in place to the checkpoint's resolved value
    (:func:`saved_prompt_warmup`); an explicit value is the user's choice and is kept. The
    same holds for ``train.prompt_after_search``: left to the default, it takes the
    checkpoint's value, and ``False`` from a checkpoint written before the field existed
    (its run trained the prompts during the search); and for
    ``train.prompt_tuning_epochs``: left to the default, it takes the checkpoint's length
    (:func:`saved_prompt_tuning`, from its tuning state ``tuning`` where the checkpoint
    kept one), ``0`` from a checkpoint written before prompt
    tuning was the default (its run trained the prompts with the backbone), and with
    prompt tuning the warm start does not apply; and for ``train.prompt_tuning_lr_scale``:
    left to the default, it takes the checkpoint's, and from a checkpoint written before the
    field existed that checkpoint's ``train.prompt_lr_scale``, at which its prompts tuned.

    Raises:
        CheckpointError: the kept warm start does not fit ``train.epochs`` (a resume with
            fewer epochs than the checkpoint's warm start); the message says what to set.
    """
    if train.prompt_after_search is None:
        saved_choice = saved.get("train", {}).get("prompt_after_search", False)
        train.prompt_after_search = saved_choice is not False
    if train.prompt_tuning_epochs is None:
        train.prompt_tuning_epochs = saved_prompt_tuning(saved, tuning)
    saved_train = saved.get("train", {})
    if train.prompt_tuning_lr_scale is None:
        # written before the field existed, the run tuned its prompts at their usual rate
        old_rate = saved_train.get("prompt_lr_scale", TrainConfig.prompt_lr_scale)
        train.prompt_tuning_lr_scale = saved_train.get("prompt_tuning_lr_scale", old_rate)
    if train.prompt_warmup is not None or train.tuning_epochs:
        return
    kept = saved_prompt_warmup(saved)
    if kept >= train.epochs:
        raise CheckpointError(
            f"checkpoint {where} was trained with its prompts held still for {kept} epochs "
            f"(train.prompt_warmup), but this run has train.epochs={train.epochs}, so they "
            "would never train again. Set train.prompt_warmup explicitly (below "
            "train.epochs), or resume with more epochs."
        )
    train.prompt_warmup = kept
