"""Prompts draw their initial values from a stream of their own.

A prompt that drew from the global stream would shift every draw after it: adding LoRAP to
a model would change the initial weights of the layers built after it, and the dropout
masks and Degree-Quant protection draws of training. Comparing a scheme with and without
the prompt would then compare two different backbones as well as the prompt. A prompt's
values come from a generator seeded by a draw taken on a fork of the global stream, so
the global stream is left where it was, and (the seed being mixed with a constant) the
prompt's values are not the draws the next layer then takes. A prompted model's backbone
starts where the unprompted one does, and since both prompts start at zero, so does its
function: what differs between the two runs is what the prompt learns.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Mixed into each prompt's seed, so that its generator's stream is not the global one's.
_SALT = 0x5DEECE66D


def prompt_generator(param: Tensor) -> torch.Generator:
    """A generator on ``param``'s device for a prompt's initial values, seeded from the
    global stream's current state without advancing it (prompts built at different points
    of a model's construction get different seeds)."""
    with torch.random.fork_rng(devices=[]):
        seed = int(torch.randint(0, 2**62, (1,)))
    return torch.Generator(device=param.device).manual_seed(seed ^ _SALT)
