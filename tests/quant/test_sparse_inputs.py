"""Sparse inputs (bag-of-words with under 1% non-zeros) never silently collapse a range."""

from __future__ import annotations

import warnings

import pytest
import torch

from lorap_dist.config import ExperimentConfig
from lorap_dist.graph.data import GraphData
from lorap_dist.quant import collapsed_points, quantize_
from lorap_dist.quant.observers import PercentileObserver
from lorap_dist.train import train

N, WORDS, CLASSES = 600, 800, 4


def sparse_graph(density: float = 0.008) -> GraphData:
    """Binary features at ``density`` whose words depend on the class, homophilous edges."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(N) % CLASSES
    vocabulary = torch.arange(WORDS).reshape(CLASSES, -1)  # each class its own words
    x = torch.zeros(N, WORDS)
    per_node = max(1, round(density * WORDS))
    for i in range(N):
        own = vocabulary[y[i], torch.randint(vocabulary.size(1), (per_node,), generator=g)]
        x[i, own] = 1.0
        if torch.rand(1, generator=g) < 0.3:  # some noise words
            x[i, torch.randint(WORDS, (1,), generator=g)] = 1.0
    src = torch.randint(N, (3 * N,), generator=g)
    same = torch.rand(3 * N, generator=g) < 0.8
    dst = torch.where(same, (src + CLASSES * torch.randint(1, 20, (3 * N,), generator=g)) % N,
                      torch.randint(N, (3 * N,), generator=g))  # fmt: skip
    edge_index = torch.cat([torch.stack([src, dst]), torch.stack([dst, src])], 1)
    perm = torch.randperm(N, generator=g)
    return GraphData(
        edge_index=edge_index, x=x, y=y, train_idx=perm[:200], valid_idx=perm[200:400],
        test_idx=perm[400:], num_classes=CLASSES,
    )  # fmt: skip


def test_the_generated_features_are_sparse_enough_to_collapse_a_plain_percentile():
    x = sparse_graph().x
    assert (x != 0).float().mean() < 0.01
    q = torch.quantile(x.reshape(-1)[::7], torch.tensor([0.01, 0.99]))
    assert q.tolist() == [0.0, 0.0]  # the paper's INT4 percentile alone: range [0, 0]


def test_a_percentile_range_falls_back_to_the_non_zero_values():
    x = sparse_graph().x
    lo, hi = PercentileObserver(percentile=0.01).batch_range(x)
    assert lo == 0 and hi == 1.0
    dense = torch.randn(5000)
    expected = torch.quantile(dense, torch.tensor([0.01, 0.99]))
    assert torch.equal(
        torch.stack(PercentileObserver(percentile=0.01).batch_range(dense)), expected
    )


SCHEMES = {
    "qat": lambda bits: {"bits": bits},
    "degree_quant": lambda bits: {"bits": bits},
    "a2q": lambda bits: {"bits": bits},
    "mixq": lambda bits: {"bits": bits, "penalty": 1e-4},
}


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_scheme_trains_on_sparse_features_without_a_collapsed_point(scheme, bits):
    graph = sparse_graph()
    config = ExperimentConfig.from_dict(
        {
            "quant": {"scheme": scheme, "options": SCHEMES[scheme](bits)},
            "prompt": {"kind": "lorap"},
            "train": {"epochs": 40, "patience": 0},
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result, model = train(config, graph, progress=False)
    assert result.test_acc > 1 / CLASSES + 0.25, result.test_acc
    assert collapsed_points(model) == []
    assert not any("zero-width range" in note for note in result.warnings)


def test_a_collapsed_point_is_reported_by_name():
    from lorap_dist.config import ModelConfig, PromptConfig
    from lorap_dist.nn import build_model
    from lorap_dist.quant.schemes.qat import QATConfig

    model = build_model(5, 3, ModelConfig(hidden=4), PromptConfig())
    quantize_(model, QATConfig(bits=4))
    assert collapsed_points(model) == []  # nothing observed yet
    observer = model.convs[0].quantizers["input"].observer
    observer.min_val, observer.max_val = torch.tensor(0.0), torch.tensor(0.0)
    (note,) = collapsed_points(model)
    assert "convs.0.input [0, 0]" in note and "zero-width range" in note
