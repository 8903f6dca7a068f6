"""Compare a layer against a reference layer: outputs and every gradient."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn


def copy_parameters(ours: nn.Module, theirs: nn.Module, names: Mapping[str, str]) -> None:
    """Copy ``theirs``' tensor ``names[k]`` (parameter or buffer) into ``ours``' tensor ``k``."""
    ours_tensors = dict(ours.named_parameters()) | dict(ours.named_buffers())
    theirs_tensors = dict(theirs.named_parameters()) | dict(theirs.named_buffers())
    with torch.no_grad():
        for mine, other in names.items():
            ours_tensors[mine].copy_(theirs_tensors[other])


def assert_same_outputs_and_grads(
    ours: nn.Module,
    theirs: nn.Module,
    names: Mapping[str, str],
    x: Tensor,
    run_ours: Callable[[nn.Module, Tensor], Tensor],
    run_theirs: Callable[[nn.Module, Tensor], Tensor],
    atol: float = 1e-5,
) -> None:
    """Assert both modules give the same output, input gradient and parameter gradients.

    The gradient is that of ``(out * c).sum()`` for a fixed random ``c``; ``names`` maps each
    of ``ours``' parameters to the one of ``theirs`` it must match (gradients are compared
    for those that require one; where ``theirs`` gets none, ``ours`` must get none).
    """
    x_ours = x.detach().clone().requires_grad_()
    x_theirs = x.detach().clone().requires_grad_()
    out_ours, out_theirs = run_ours(ours, x_ours), run_theirs(theirs, x_theirs)
    torch.testing.assert_close(out_ours, out_theirs, atol=atol, rtol=1e-5)
    cotangent = torch.randn(out_ours.shape, generator=torch.Generator().manual_seed(1))
    (out_ours * cotangent).sum().backward()
    (out_theirs * cotangent).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_theirs.grad, atol=atol, rtol=1e-5)
    ours_params, theirs_params = dict(ours.named_parameters()), dict(theirs.named_parameters())
    for mine, other in names.items():
        if mine in ours_params and ours_params[mine].requires_grad:
            if theirs_params[other].grad is None:  # not on the path (a pair without x_dst)
                assert ours_params[mine].grad is None, f"{mine} got a gradient, {other} none"
                continue
            assert ours_params[mine].grad is not None, f"{mine} got no gradient"
            torch.testing.assert_close(
                ours_params[mine].grad,
                theirs_params[other].grad,
                atol=atol,
                rtol=1e-5,
                msg=lambda m, p=mine: f"gradient of {p}: {m}",
            )
