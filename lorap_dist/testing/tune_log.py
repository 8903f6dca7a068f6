"""A trial-start log the tests install in a sweep (``run_sweep(..., on_trial_start=...)``) to
count how often each trial ran, across retries, restores and a killed driver."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ExecutionLog:
    """Appends each trial start's record to the JSON-lines file ``path``; pickled into every
    trial process, so it holds nothing but the path."""

    path: str

    def __call__(self, record: dict[str, Any]) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as handle:  # one short line per write: appends do not interleave
            handle.write(json.dumps(record) + "\n")

    def records(self) -> list[dict[str, Any]]:
        """Every record written so far, in order."""
        lines = Path(self.path).read_text().splitlines()
        return [json.loads(line) for line in lines]
