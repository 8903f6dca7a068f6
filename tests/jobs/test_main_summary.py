"""The main job's summary lines, from a distributed run's result."""

from __future__ import annotations


def summary(best_epoch: int, tuning_start: int | None) -> dict:
    before = None if tuning_start is None else {"epoch": 3, "valid": 0.81, "test": 0.8}
    return {"best_epoch": best_epoch, "tuning_start_epoch": tuning_start, "before_tuning": before}


def test_the_main_job_says_whether_the_tuned_prompt_was_kept():
    from jobs.main import tuning_line

    kept = tuning_line(summary(best_epoch=22, tuning_start=20))
    assert kept == (
        "[main] prompt tuning on the frozen backbone from epoch 20; the prompted model kept: "
        "it beat the scheme alone's best valid 0.8100 (test 0.8000)\n"
    )
    assert "not kept: it did not beat" in tuning_line(summary(best_epoch=3, tuning_start=20))
    assert tuning_line(summary(best_epoch=3, tuning_start=None)) == ""  # trained together


def test_the_main_job_leads_with_the_reported_models_accuracy_not_the_last_epochs():
    """After a tuning phase whose prompt lost, the last epoch's model is not the one the run
    reports: the headline is the best validation epoch's test accuracy."""
    from jobs.main import accuracy_line

    line = accuracy_line(
        {"best_test_acc": 0.8306, "best_valid_acc": 0.8252, "best_epoch": 17,
         "test_acc": 0.7326, "valid_acc": 0.7334}
    )  # fmt: skip
    assert line == (
        "[main] test accuracy 0.8306 (best validation epoch 17, valid 0.8252: the reported "
        "model); last epoch: test 0.7326, valid 0.7334\n"
    )
