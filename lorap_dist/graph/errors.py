"""The one error type the dataset pipeline raises for bad input."""

from __future__ import annotations


class DatasetError(ValueError):
    """Input data or a dataset directory is unusable.

    The message is a sentence naming the file (and line or field where there is one), what
    was wrong and what to do about it.
    """
