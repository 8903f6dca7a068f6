"""The graph-level model against a model built from PyG's own layers and pooling."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch_geometric.nn import GCNConv, GINConv, global_add_pool, global_max_pool, global_mean_pool

from lorap_dist.config import ModelConfig, PromptConfig
from lorap_dist.nn import GraphGNN
from lorap_dist.prompt import LoRAP
from lorap_dist.quant import A2QConfig, MixQConfig, QATConfig, QuantConfig, quantize_
from lorap_dist.testing.graphs import random_graph
from lorap_dist.testing.layers import assert_same_outputs_and_grads

POOL = {"sum": global_add_pool, "mean": global_mean_pool, "max": global_max_pool}
IN, HIDDEN, OUT = 5, 8, 3


class PygGraphModel(nn.Module):
    """The reference: PyG layers, batch norm and ReLU, PyG pooling, a torch MLP head."""

    def __init__(self, arch: str, layers: int, readout: str) -> None:
        super().__init__()
        widths = [IN] + [HIDDEN] * layers
        if arch == "gin":
            self.convs = nn.ModuleList(
                GINConv(
                    nn.Sequential(
                        nn.Linear(widths[l], HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN)
                    )
                )
                for l in range(layers)
            )
        else:
            self.convs = nn.ModuleList(GCNConv(widths[l], HIDDEN) for l in range(layers))
        self.norms = nn.ModuleList(nn.BatchNorm1d(HIDDEN) for _ in range(layers))
        self.pool = POOL[readout]
        self.head = nn.Sequential(nn.Linear(HIDDEN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, OUT))

    def forward(self, x, edge_index, batch, num_graphs):
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = torch.relu(norm(conv(x, edge_index)))
        return self.head(self.pool(x, batch, num_graphs))


def names(arch: str, layers: int) -> dict[str, str]:
    out = {
        "head.lin1.weight": "head.0.weight",
        "head.lin1.bias": "head.0.bias",
        "head.lin2.weight": "head.2.weight",
        "head.lin2.bias": "head.2.bias",
    }
    for l in range(layers):
        if arch == "gin":
            out |= {
                f"convs.{l}.lin1.weight": f"convs.{l}.nn.0.weight",
                f"convs.{l}.lin1.bias": f"convs.{l}.nn.0.bias",
                f"convs.{l}.lin2.weight": f"convs.{l}.nn.2.weight",
                f"convs.{l}.lin2.bias": f"convs.{l}.nn.2.bias",
            }
        else:
            out |= {
                f"convs.{l}.lin.weight": f"convs.{l}.lin.weight",
                f"convs.{l}.bias": f"convs.{l}.bias",
            }
        out |= {f"norms.{l}.weight": f"norms.{l}.weight", f"norms.{l}.bias": f"norms.{l}.bias"}
    return out


def batch_of_graphs(seed: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Three disconnected random graphs as one batch: edge_index and each node's graph."""
    sizes = [6, 9, 4]
    edges, batch, offset = [], [], 0
    for g, n in enumerate(sizes):
        edges.append(random_graph(n, 2 * n, seed + g) + offset)
        batch += [g] * n
        offset += n
    return torch.cat(edges, 1), torch.tensor(batch), len(sizes)


@pytest.mark.parametrize("arch", ["gin", "gcn"])
@pytest.mark.parametrize("readout", ["sum", "mean", "max"])
def test_unquantized_model_matches_pyg_layers_and_pooling(arch: str, readout: str) -> None:
    torch.manual_seed(0)
    config = ModelConfig(
        arch=arch, hidden=HIDDEN, layers=3, norm="batch", readout=readout, dropout=0.0
    )
    ours = GraphGNN(IN, OUT, config)
    theirs = PygGraphModel(arch, 3, readout)
    mapping = names(arch, 3)
    with torch.no_grad():
        mine = dict(ours.named_parameters())
        for key, other in mapping.items():
            mine[key].copy_(dict(theirs.named_parameters())[other])
    edge_index, batch, num_graphs = batch_of_graphs(seed=1)
    x = torch.randn(batch.numel(), IN)
    for mode in ("train", "eval"):  # batch norm's batch and running statistics
        getattr(ours, mode)(), getattr(theirs, mode)()
        assert_same_outputs_and_grads(
            ours,
            theirs,
            mapping,
            x,
            lambda m, x: m(x, edge_index, batch, num_graphs),
            lambda m, x: m(x, edge_index, batch, num_graphs),
        )
        ours.zero_grad(), theirs.zero_grad()


def test_each_graph_is_pooled_alone_and_lorap_is_on_every_layer() -> None:
    torch.manual_seed(0)
    config = ModelConfig(arch="gin", hidden=HIDDEN, layers=2, readout="sum", dropout=0.0)
    model = GraphGNN(IN, OUT, config, PromptConfig(kind="lorap", k=2, r=2)).eval()
    assert sum(isinstance(m, LoRAP) for m in model.modules()) == 2
    edge_index, batch, num_graphs = batch_of_graphs(seed=3)
    x = torch.randn(batch.numel(), IN)
    together = model(x, edge_index, batch, num_graphs)
    for g in range(num_graphs):  # a graph's output does not depend on its batch mates
        nodes = torch.nonzero(batch == g).view(-1)
        keep = batch[edge_index[0]] == g
        local = edge_index[:, keep] - nodes[0]
        alone = model(x[nodes], local, torch.zeros_like(nodes), 1)
        torch.testing.assert_close(alone[0], together[g], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("scheme", "prompt"),
    [
        (QATConfig(bits=4), PromptConfig(kind="gpf_lorap", k=2, r=2)),
        (A2QConfig(init_bits=4, memory_budget=4.0), PromptConfig(kind="lorap", unit="step")),
        (MixQConfig(candidate_bits=(2, 4, 8)), PromptConfig(kind="lorap", unit="step")),
    ],
    ids=["qat-gpf", "a2q-step-units", "mixq-step-units"],
)  # fmt: skip
def test_prompts_counted_in_an_rms_take_it_per_graph(
    scheme: QuantConfig, prompt: PromptConfig
) -> None:
    """GPF-plus and LoRAP in step units on a quantizer without one step count their prompt
    in a root mean square: taken over the whole batch, a graph's prediction would change
    with the graphs batched beside it (here a star with 100x larger features)."""
    torch.manual_seed(0)
    config = ModelConfig(arch="gin", hidden=HIDDEN, layers=2, readout="sum", dropout=0.0)
    model = quantize_(GraphGNN(IN, OUT, config, prompt), scheme, num_nodes=0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("p_b", "bases")):
                parameter.normal_()
    edge_index, batch, num_graphs = batch_of_graphs(seed=3)
    x = torch.randn(batch.numel(), IN)
    model(x, edge_index, batch, num_graphs)  # training mode: the points observe ranges
    model.eval()
    n, hub = batch.numel(), 12
    star = torch.stack([torch.full((hub,), n), torch.arange(n + 1, n + 1 + hub)])
    with torch.no_grad():
        alone = model(x, edge_index, batch, num_graphs)
        beside = model(
            torch.cat([x, 100 * torch.randn(hub + 1, IN)]),
            torch.cat([edge_index, star, star.flip(0)], dim=1),
            torch.cat([batch, torch.full((hub + 1,), num_graphs)]),
            num_graphs + 1,
        )
    torch.testing.assert_close(beside[:num_graphs], alone)


def test_gat_needs_hidden_divisible_by_heads() -> None:
    with pytest.raises(ValueError, match="model.hidden=7 is not divisible by model.heads=2"):
        GraphGNN(IN, OUT, ModelConfig(arch="gat", hidden=7, heads=2))


def test_bad_readout_is_a_config_error() -> None:
    from lorap_dist.config import ConfigError

    with pytest.raises(ConfigError, match="model.readout='median' is not allowed"):
        ModelConfig(readout="median")
