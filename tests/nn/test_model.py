import pytest
import torch
from torch import Tensor, nn
from torch_geometric.nn.models import GAT, GCN, GIN, GraphSAGE

from lorap_dist.config import ModelConfig, PromptConfig
from lorap_dist.graph import Block, NodeInfo
from lorap_dist.nn import GNN, QGATConv, build_model, parameter_counts
from lorap_dist.prompt import GPFPlus, LoRAP
from lorap_dist.quant import Quantizer
from lorap_dist.testing.fake_quant import RecordingQuantizer
from lorap_dist.testing.graphs import (
    GRAPH_FORMS,
    full_block,
    graph_form,
    in_neighbour_block,
    random_graph,
)
from lorap_dist.testing.layers import assert_same_outputs_and_grads, copy_parameters

ARCHS = ["gcn", "sage", "gin", "gat"]
IN, OUT, N = 5, 3, 14


def model_config(arch: str, norm: str = "none", layers: int = 2) -> ModelConfig:
    return ModelConfig(arch=arch, hidden=8, layers=layers, dropout=0.3, norm=norm, heads=2)


def randomise_prompts(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, LoRAP):
            nn.init.normal_(module.p_b)
        if isinstance(module, GPFPlus):
            nn.init.normal_(module.bases)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", ["lorap", "gpf", "gpf_lorap"])
def test_untrained_prompt_equals_the_backbone(arch: str, kind: str) -> None:
    torch.manual_seed(0)
    backbone = build_model(IN, OUT, model_config(arch, norm="layer"), PromptConfig())
    prompted = build_model(IN, OUT, model_config(arch, norm="layer"), PromptConfig(kind=kind))
    missing, unexpected = prompted.load_state_dict(backbone.state_dict(), strict=False)
    assert not unexpected
    assert missing and all(".lorap." in k or k.startswith("gpf.") for k in missing)
    backbone.eval(), prompted.eval()
    edge_index, x = random_graph(N, 40, seed=1), torch.randn(N, IN)
    torch.testing.assert_close(prompted(x, edge_index), backbone(x, edge_index))
    randomise_prompts(prompted)  # ... and the prompt is really on the path
    assert not torch.allclose(prompted(x, edge_index), backbone(x, edge_index))


def test_a_prompts_values_are_not_the_draws_that_follow_it() -> None:
    """The prompt's generator is seeded from the global stream, not a copy of it: the
    values are not the next layer's (or training's) draws rescaled."""
    torch.manual_seed(0)
    model = build_model(IN, OUT, model_config("gcn"), PromptConfig(kind="lorap"))
    last = [m for m in model.modules() if isinstance(m, LoRAP)][-1]
    bound = float(last.w_phi.abs().max()) + 1e-3
    following = torch.empty_like(last.w_phi).uniform_(-1.0, 1.0)
    ratio = last.w_phi / following
    assert float(ratio.std()) > 0.1 * bound


def test_the_prompt_unit_reaches_every_layers_lorap() -> None:
    model = build_model(IN, OUT, model_config("gin"), PromptConfig(kind="lorap", unit="step"))
    units = [m.unit for m in model.modules() if isinstance(m, LoRAP)]
    assert units == ["step", "step"]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", ["lorap", "gpf", "gpf_lorap"])
def test_a_prompt_leaves_the_backbone_and_the_training_draws_as_they_are(
    arch: str, kind: str
) -> None:
    """Built from the same seed, the prompted model's backbone starts with the unprompted
    one's weights, and a training-mode forward (dropout) draws the same masks: a run with
    the prompt and one without differ only by what the prompt learns."""
    edge_index, x = random_graph(N, 40, seed=1), torch.randn(N, IN)

    def build_and_run(prompt: PromptConfig) -> tuple[nn.Module, Tensor, Tensor]:
        torch.manual_seed(0)
        model = build_model(IN, OUT, model_config(arch, norm="layer", layers=3), prompt).train()
        return model, model(x, edge_index), torch.rand(4)

    backbone, out, after = build_and_run(PromptConfig())
    prompted, prompted_out, prompted_after = build_and_run(PromptConfig(kind=kind))
    theirs = dict(prompted.named_parameters())
    for name, value in backbone.named_parameters():
        assert torch.equal(theirs[name], value), name
    torch.testing.assert_close(prompted_out, out, rtol=0, atol=0)
    assert torch.equal(prompted_after, after)  # the stream is where it was
    lorap = [m.w_phi for m in prompted.modules() if isinstance(m, LoRAP)]
    pairs = zip(lorap, lorap[1:], strict=False)
    assert not any(torch.equal(a, b) for a, b in pairs if a.shape == b.shape)


@pytest.mark.parametrize("arch", ARCHS)
def test_lorap_gradient_reaches_every_layer_and_one_step_moves_the_output(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(IN, OUT, model_config(arch), PromptConfig(kind="lorap", k=4, r=2))
    model.eval()
    edge_index, x = random_graph(N, 40, seed=2), torch.randn(N, IN)
    before = model(x, edge_index).detach()
    prompt_params = [m.p_b for m in model.modules() if isinstance(m, LoRAP)]
    assert len(prompt_params) == 2
    loss = nn.functional.cross_entropy(model(x, edge_index), torch.randint(OUT, (N,)))
    loss.backward()
    for p_b in prompt_params:
        assert p_b.grad is not None and p_b.grad.abs().sum() > 0
    torch.optim.Adam(prompt_params, lr=0.01).step()
    assert all(p_b.abs().sum() > 0 for p_b in prompt_params)
    assert not torch.allclose(model(x, edge_index), before)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("norm", ["none", "batch"])
def test_full_blocks_equal_the_full_graph(arch: str, norm: str) -> None:
    torch.manual_seed(0)
    model = build_model(IN, OUT, model_config(arch, norm, layers=3), PromptConfig("gpf_lorap"))
    randomise_prompts(model)
    model.eval()
    edge_index, x = random_graph(N, 40, seed=3), torch.randn(N, IN)
    blocks = [full_block(edge_index, N)] * 3
    torch.testing.assert_close(model(x, blocks), model(x, edge_index))


PYG_MODELS = {"gcn": GCN, "sage": GraphSAGE, "gin": GIN, "gat": GAT}
PYG_NAMES = {  # our parameter -> PyG's, within convs.{l}
    "gcn": {"lin.weight": "lin.weight", "bias": "bias"},
    "sage": {
        "lin_l.weight": "lin_l.weight",
        "lin_l.bias": "lin_l.bias",
        "lin_r.weight": "lin_r.weight",
    },
    "gin": {
        "lin1.weight": "nn.lins.0.weight",
        "lin1.bias": "nn.lins.0.bias",
        "lin2.weight": "nn.lins.1.weight",
        "lin2.bias": "nn.lins.1.bias",
    },
    "gat": {"lin.weight": "lin.weight", "att_src": "att_src", "att_dst": "att_dst", "bias": "bias"},
}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("form", GRAPH_FORMS)
def test_matches_the_pyg_model_on_each_graph_form(arch: str, form: str) -> None:
    """One graph for every layer, in each form, against PyG's own model of three layers."""
    torch.manual_seed(0)
    ours = build_model(IN, OUT, model_config(arch, layers=3), PromptConfig()).eval()
    kwargs = {"heads": 2} if arch == "gat" else {}
    theirs = PYG_MODELS[arch](IN, 8, 3, OUT, **kwargs).eval()
    for parameter in theirs.parameters():
        nn.init.normal_(parameter, std=0.5)  # PyG starts biases at zero, which hides bugs
    names = {
        f"convs.{l}.{mine}": f"convs.{l}.{other}"
        for l in range(3)
        for mine, other in PYG_NAMES[arch].items()
    }
    copy_parameters(ours, theirs, names)
    graph = graph_form(form, random_graph(N, 40, seed=7, duplicates=0), N, N)
    assert_same_outputs_and_grads(
        ours,
        theirs,
        names,
        torch.randn(N, IN),
        lambda m, x: m(x, graph),
        lambda m, x: m(x, graph),
    )


@pytest.mark.parametrize("arch", ["sage", "gin", "gat"])
def test_sampled_blocks_give_the_seeds_their_full_graph_outputs(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(IN, OUT, model_config(arch, "layer"), PromptConfig("lorap"))
    randomise_prompts(model)
    model.eval()
    edge_index, x = random_graph(30, 60, seed=4), torch.randn(30, IN)
    seeds = torch.tensor([2, 11, 17])
    outer, hop1 = in_neighbour_block(edge_index, seeds)  # last layer: seeds <- 1-hop
    inner, hop2 = in_neighbour_block(edge_index, hop1)  # first layer: 1-hop <- 2-hop
    assert inner.num_src > inner.num_dst > outer.num_dst
    out = model(x[hop2], [inner, outer])
    torch.testing.assert_close(out, model(x, edge_index)[seeds])


def test_node_facts_follow_the_blocks_and_the_node_transform() -> None:
    model = build_model(IN, OUT, model_config("sage"), PromptConfig())
    recorders = [RecordingQuantizer(), RecordingQuantizer()]
    for conv, recorder in zip(model.convs, recorders, strict=True):
        conv.quantizers["input"] = recorder
    edge_index = random_graph(N, 40, seed=5)
    inner, ids = in_neighbour_block(edge_index, torch.arange(6))
    src, dst = inner.edge_index
    outer = Block(inner.edge_index[:, (dst < 2) & (src < inner.num_dst)], inner.num_dst, 2)
    calls = []

    def transform(nodes: NodeInfo | None) -> NodeInfo:
        calls.append(nodes)
        return NodeInfo(ids=nodes.ids, protect=nodes.ids % 2 == 0)

    model.node_transform = transform
    given = NodeInfo(ids=ids)
    model(torch.randn(len(ids), IN), [inner, outer], given)
    assert calls == [given]
    for recorder, rows in zip(recorders, (inner.num_src, inner.num_dst), strict=True):
        ((_, nodes),) = recorder.calls
        torch.testing.assert_close(nodes.ids, ids[:rows])
        torch.testing.assert_close(nodes.protect, ids[:rows] % 2 == 0)


def test_block_lists_are_checked() -> None:
    model = build_model(IN, OUT, model_config("gcn"), PromptConfig())
    edge_index, x = random_graph(N, 40, seed=6), torch.randn(N, IN)
    with pytest.raises(ValueError, match="exactly 2 Blocks"):
        model(x, [full_block(edge_index, N)])
    with pytest.raises(ValueError, match="one graph for every layer"):
        model(x, [edge_index, edge_index])
    with pytest.raises(ValueError, match=r"1 graph\(s\) of types \['Block'\]"):
        model(x, full_block(edge_index, N))
    with pytest.raises(ValueError, match=r"blocks\[1\].num_src=5"):
        model(x, [Block(edge_index, N, N), Block(edge_index[:, :0], 5, 5)])


def test_gat_hidden_width_must_split_across_heads() -> None:
    with pytest.raises(ValueError, match="divisible"):
        GNN(IN, OUT, ModelConfig(arch="gat", hidden=9, heads=2))
    model = GNN(IN, OUT, ModelConfig(arch="gat", hidden=8, heads=2, layers=3))
    first, last = model.convs[0], model.convs[-1]
    assert isinstance(first, QGATConv) and (first.heads, first.out_channels) == (2, 4)
    assert first.concat and not last.concat and last.out_channels == OUT


def aggregate_widths(arch: str) -> list[int]:
    """Width LoRAP sees in each of 3 layers (IN -> 8 -> 8 -> OUT)."""
    return {"gcn": [8, 8, OUT], "sage": [IN, 8, 8], "gin": [IN, 8, 8], "gat": [8, 8, OUT]}[arch]


class LearnedStep(Quantizer):
    def __init__(self) -> None:
        super().__init__()
        self.step = nn.Parameter(torch.ones(3))

    def forward(self, x: Tensor, nodes: NodeInfo | None = None) -> Tensor:
        return x


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", ["none", "lorap", "gpf", "gpf_lorap"])
def test_parameter_counts(arch: str, kind: str) -> None:
    k, r = 4, 2
    config = model_config(arch, norm="batch", layers=3)
    backbone = parameter_counts(build_model(IN, OUT, config, PromptConfig()))
    model = build_model(IN, OUT, config, PromptConfig(kind=kind, k=k, r=r))
    prompt = PromptConfig(kind=kind)
    expected = sum(d * k + r * (k + d) for d in aggregate_widths(arch)) if prompt.lorap else 0
    expected += 2 * IN * k if prompt.gpf else 0
    model.convs[0].quantizers["input"] = LearnedStep()
    counts = parameter_counts(model)
    assert counts == {
        "backbone": backbone["backbone"],
        "prompt": expected,
        "quantizer": 3,
        "total": backbone["backbone"] + expected + 3,
    }
    assert counts["total"] == sum(p.numel() for p in model.parameters())


def test_repr_names_the_stack() -> None:
    model = build_model(IN, OUT, model_config("gin"), PromptConfig("lorap", k=6, r=3))
    assert repr(model) == "GNN(arch=gin, layers=2, hidden=8, prompt=lorap, k=6, r=3)"


def test_gpf_support_reaches_the_input_prompt() -> None:
    for support in ("nonzero", "all"):
        prompt = PromptConfig(kind="gpf", gpf_support=support)
        model = build_model(5, 3, ModelConfig(arch="gcn", hidden=8), prompt)
        assert model.gpf.support == support


@pytest.mark.parametrize("arch", ["gcn", "sage", "gin", "gat"])
def test_dropout_after_the_input_point_is_the_same_model_at_full_precision(arch: str) -> None:
    """Moving the dropout past an identity point changes no value and no random draw."""
    graph = random_graph(30, 90, seed=2)
    x = torch.randn(30, 5)
    outputs = []
    for after in (False, True):
        torch.manual_seed(0)
        config = ModelConfig(arch=arch, hidden=8, layers=3, dropout=0.5, dropout_after_input=after)
        model = build_model(5, 3, config, PromptConfig())
        torch.manual_seed(1)
        outputs.append(model(x, graph))
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=0)


@pytest.mark.parametrize("after", [False, True])
def test_with_dropout_after_the_input_point_it_observes_the_undropped_rows(after: bool) -> None:
    torch.manual_seed(0)
    config = ModelConfig(arch="gcn", hidden=16, layers=2, dropout=0.5, dropout_after_input=after)
    model = build_model(5, 3, config, PromptConfig())
    seen: dict[str, Tensor] = {}
    model.norms[0].register_forward_hook(lambda m, a, out: seen.update(hidden=out.relu()))
    model.convs[1].quantizers["input"] = RecordingQuantizer()
    model(torch.randn(40, 5), random_graph(40, 120, seed=3))
    observed = model.convs[1].quantizers["input"].calls[0][0]
    assert torch.equal(observed, seen["hidden"]) == after
    assert (observed.max() > 1.5 * seen["hidden"].max()) != after  # kept rows scaled by 2


def test_dropout_after_input_must_be_a_bool() -> None:
    from lorap_dist.config import ConfigError

    with pytest.raises(ConfigError, match="model.dropout_after_input='yes' must be true or"):
        ModelConfig(dropout_after_input="yes")
