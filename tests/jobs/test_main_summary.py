"""The main job's summary of prompt tuning, from a distributed run's result."""

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
