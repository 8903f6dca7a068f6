"""What a trained LoRAP does, measured per layer on a full graph.

:func:`lorap_diagnostics` runs a trained, quantized model three times in evaluation mode
(no observer moves) and reads each layer's aggregate where LoRAP sees it:

1. as trained: the aggregate ``h`` LoRAP receives, its prompt ``p`` and the re-quantized
   sum ``Q(h + p)``;
2. the same model with every prompt set to zero (``P_B = 0``): ``Q(h)`` on the same grids;
3. the same weights with every quantizer off and no prompt: the float aggregate ``h_fp``,
   the paper's ``f(X, A)``.

Per layer it reports:

- ``prompt_to_aggregate``: mean row norm of ``p`` over mean row norm of ``h``;
- ``prompt_to_step``: mean ``|p|`` over the prompt point's quantization step (how many
  rounding steps the prompt moves a value; ``nan`` when the point has no per-tensor grid);
- ``weight_entropy``: entropy of the softmax weights over ``k`` bases, divided by
  ``log k`` and averaged over nodes (1 = every node mixes the bases uniformly, so every
  node gets the same prompt);
- ``prompt_range_to_aggregate_range``: the width of the prompt point's range over the
  width of ``h``'s range (above 1: the prompt widened the grid);
- ``error_with_prompt`` / ``error_without_prompt``: the aggregation error
  ``||f(Q(X), A) - f(X, A)||_F / ||f(X, A)||_F`` with and without the prompt;
- ``error_of_exact_rounding``: the same error of ``Q(h_fp)``, the prompt point's grid
  applied to the float aggregate: what is left if the prompt made ``h + p`` equal to
  ``f(X, A)`` exactly. The prompt can remove error down to about this level, never the
  rounding that comes after it.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from lorap_dist.graph.block import NodeInfo
from lorap_dist.graph.data import GraphData
from lorap_dist.prompt.lorap import LoRAP
from lorap_dist.quant.base import IdentityQuantizer, quantizers_of


def _lorap_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(getattr(module, "lorap", None), LoRAP)
    ]


@torch.no_grad()
def _capture(model: nn.Module, graph: GraphData, nodes: NodeInfo) -> list[dict[str, Tensor]]:
    """Each LoRAP layer's input ``h``, prompt ``p`` and output in one forward pass."""
    seen: list[dict[str, Tensor]] = []
    hooks = []
    for _, layer in _lorap_layers(model):

        def hook(lorap: LoRAP, args: tuple, output: Tensor) -> None:
            h = args[0]
            weights, prompt = lorap.weights_and_prompt(h, args[1])  # [N, k], [N, d]
            seen.append(
                {"h": h, "p": prompt, "out": output, "weights": weights, "quantizer": args[1]}
            )

        hooks.append(layer.lorap.register_forward_hook(hook))
    training = model.training
    try:
        model.eval()
        model(graph.x, graph.edge_index, nodes)
    finally:
        model.train(training)
        for handle in hooks:
            handle.remove()
    return seen


def _relative_error(value: Tensor, reference: Tensor) -> float:
    scale = torch.linalg.norm(reference).clamp_min(1e-12)
    return float(torch.linalg.norm(value - reference) / scale)


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def _step(quantizer: nn.Module) -> float:
    grid = getattr(quantizer, "qparams", lambda: None)()
    return math.nan if grid is None else float(grid[0])


def lorap_diagnostics(model: nn.Module, graph: GraphData) -> list[dict[str, float]]:
    """Per LoRAP layer of ``model``, the measures of the module docstring, on ``graph``.

    The model is left as it was (the prompt-free and float runs use copies).
    """
    nodes = NodeInfo(ids=torch.arange(graph.num_nodes), degree=graph.in_degree())
    trained = _capture(model, graph, nodes)
    unprompted = copy.deepcopy(model)
    for _, layer in _lorap_layers(unprompted):
        layer.lorap.p_b.data.zero_()
    without = _capture(unprompted, graph, nodes)
    floating = copy.deepcopy(unprompted)
    for name, _ in list(quantizers_of(floating)):
        module_name, _, point = name.rpartition(".")
        owner = floating.get_submodule(module_name) if module_name else floating
        owner.quantizers[point] = IdentityQuantizer()
    reference = _capture(floating, graph, nodes)
    rows = []
    for (name, _), ours, plain, exact in zip(
        _lorap_layers(model), trained, without, reference, strict=True
    ):
        h, p, weights = ours["h"], ours["p"], ours["weights"]
        k = weights.size(1)
        entropy = -(weights * weights.clamp_min(1e-30).log()).sum(-1) / math.log(k) if k > 1 else 0
        observer = getattr(ours["quantizer"], "observer", None)
        if observer is not None and observer.initialized and observer.min_val.numel() == 1:
            prompt_width = float(observer.max_val - observer.min_val)
        else:
            prompt_width = float((h + p).max() - (h + p).min())
        rows.append(
            {
                "layer": name,
                "prompt_to_aggregate": _ratio(
                    float(p.norm(dim=-1).mean()), float(h.norm(dim=-1).mean())
                ),
                "prompt_to_step": _ratio(float(p.abs().mean()), _step(ours["quantizer"])),
                "weight_entropy": float(torch.as_tensor(entropy).mean()),
                "prompt_range_to_aggregate_range": _ratio(prompt_width, float(h.max() - h.min())),
                "error_with_prompt": _relative_error(ours["out"], exact["h"]),
                "error_without_prompt": _relative_error(plain["out"], exact["h"]),
                "error_of_exact_rounding": _relative_error(
                    _rounded(ours["quantizer"], exact["h"], nodes), exact["h"]
                ),
            }
        )
    return rows


@torch.no_grad()
def _rounded(quantizer: nn.Module, h: Tensor, nodes: NodeInfo) -> Tensor:
    """``h`` on ``quantizer``'s grid, in evaluation mode (no observer moves)."""
    training = quantizer.training
    quantizer.eval()
    try:
        return quantizer(h, nodes)
    finally:
        quantizer.train(training)
