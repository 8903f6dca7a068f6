"""Prompts: LoRAP on a layer's aggregate, GPF-plus on the input features."""

from lorap_dist.prompt.gpf import GPFPlus
from lorap_dist.prompt.lorap import LoRAP, lorap_prompt

__all__ = ["GPFPlus", "LoRAP", "lorap_prompt"]
