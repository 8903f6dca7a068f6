"""The one best-epoch and early-stopping rule every training loop uses."""

from __future__ import annotations

import math

from lorap_dist.tracking import BestEpoch, PromptTuning


def test_the_best_is_the_first_strictly_higher_validation_accuracy():
    best = BestEpoch(patience=3)
    assert best.update(0, 0.5, 0.4)
    assert not best.update(1, 0.5, 0.9)  # a tie does not replace the best
    assert best.update(2, 0.6, 0.55)
    assert (best.epoch, best.valid, best.test) == (2, 0.6, 0.55)


def test_patience_counts_from_the_best_and_waits_for_the_schedule():
    best = BestEpoch(patience=2)
    best.update(0, 0.5, 0.5)
    assert not best.should_stop(1)
    assert best.should_stop(2)
    assert not best.should_stop(2, settled=False)  # e.g. MixQ has not frozen yet
    assert not BestEpoch(patience=0).should_stop(100)


def test_restart_forgets_the_best_so_the_next_epoch_wins():
    best = BestEpoch(patience=5)
    best.update(3, 0.9, 0.8)
    best.restart()
    assert best.epoch == -1 and math.isnan(best.test)
    assert best.update(4, 0.2, 0.1)  # the frozen model's first epoch is its best so far
    assert (best.epoch, best.valid) == (4, 0.2)


def test_state_round_trips():
    best = BestEpoch(patience=5)
    best.update(7, 0.7, 0.6)
    other = BestEpoch(patience=9)
    other.load_state_dict(best.state_dict())
    assert (other.epoch, other.valid, other.test, other.patience) == (7, 0.7, 0.6, 9)


def test_an_error_is_best_when_lowest_and_the_first_finite_one_counts():
    best = BestEpoch(patience=3, higher_is_better=False)
    assert not best.update(0, math.nan, 0.5)
    assert best.update(1, 2.5, 2.0)  # any first error is the best so far, even above 1
    assert not best.update(2, 2.5, 1.0)  # a tie does not replace the best
    assert best.update(3, 0.4, 0.3)
    assert (best.epoch, best.valid, best.test) == (3, 0.4, 0.3)
    best.restart()
    assert best.update(4, 9.0, 9.0)
    assert "higher_is_better" not in best.state_dict()


def test_prompt_tuning_extends_the_run_once_and_survives_a_checkpoint():
    tuning = PromptTuning(epochs=3)
    assert not tuning.active and tuning.end(10) == 10
    assert not tuning.due(run_over=False) and tuning.due(run_over=True)
    best = BestEpoch()
    best.update(4, 0.7, 0.6)
    tuning.begin(6, best)  # stopped early after epoch 6
    assert tuning.active and (tuning.start, tuning.end(10)) == (7, 10)
    assert tuning.before == {"epoch": 4, "valid": 0.7, "test": 0.6}
    assert not tuning.due(run_over=True)  # once
    resumed = PromptTuning(epochs=3)
    resumed.load_state_dict(tuning.state_dict())
    assert (resumed.start, resumed.before, resumed.end(10)) == (7, tuning.before, 10)
    fresh = PromptTuning(epochs=3)
    fresh.load_state_dict({})  # a checkpoint written before it existed
    assert not fresh.active and fresh.end(10) == 10
    assert not PromptTuning(epochs=0).due(run_over=True)  # not configured


def test_prompt_tuning_stops_on_the_patience_counted_from_its_start_or_its_own_best():
    best = BestEpoch(patience=3)
    best.update(4, 0.7, 0.6)
    tuning = PromptTuning(epochs=50)
    assert not tuning.should_stop(20, best)  # before the phase: the run's rule decides
    tuning.begin(6, best)  # the phase starts at epoch 7; the best is the scheme's, epoch 4
    assert [tuning.should_stop(e, best) for e in (7, 8, 9)] == [False, False, True]
    best.update(8, 0.8, 0.6)  # a tuned epoch wins: the patience counts from it
    assert [tuning.should_stop(e, best) for e in (9, 10, 11)] == [False, False, True]
    best.patience = 0  # never stops early: the phase runs its epochs
    assert not tuning.should_stop(40, best)
