"""Prompts draw their initial values from a fork of the random stream.

A prompt that drew from the global stream would shift every draw after it: adding LoRAP to
a model would change the initial weights of the layers built after it, and the dropout
masks and Degree-Quant protection draws of training. Comparing a scheme with and without
the prompt would then compare two different backbones as well as the prompt. Drawn from a
fork, a prompted model's backbone starts where the unprompted one does, and since both
prompts start at zero, so does its function: what differs between the two runs is what the
prompt learns.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor


@contextmanager
def forked_stream(*params: Tensor) -> Iterator[None]:
    """Draws inside the block come from a copy of the random stream of ``params``' devices
    (the CPU's always); the stream itself is where it was when the block ends. Draws inside
    follow the stream's current state, so prompts built at different points of a model's
    construction start differently."""
    devices = sorted({p.device.index or 0 for p in params if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        yield
