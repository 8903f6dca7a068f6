"""train.device: which device runs, clear errors for missing ones, nothing left behind."""

from __future__ import annotations

import pytest
import torch

import lorap_dist.train as training
from lorap_dist.config import ConfigError, ExperimentConfig
from lorap_dist.nn.model import GNN


@pytest.fixture
def cuda(monkeypatch):
    """Pretend the machine has two CUDA devices (only the selection logic runs)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_auto_picks_the_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert training.resolve_device("auto") == torch.device("cpu")
    assert training.resolve_device("cpu") == torch.device("cpu")


def test_auto_picks_the_first_cuda_device_and_indices_are_checked(cuda):
    assert training.resolve_device("auto") == torch.device("cuda", 0)
    assert training.resolve_device("cuda") == torch.device("cuda", 0)
    assert training.resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match=r"has 2 CUDA device\(s\) \(cuda:0 \.\. cuda:1\)"):
        training.resolve_device("cuda:2")


def test_cuda_on_a_cpu_only_machine_is_a_clear_error_before_any_work(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(training, "load_graph", lambda config: pytest.fail("loaded the graph"))
    config = ExperimentConfig.from_dict({"train": {"device": "cuda"}})
    with pytest.raises(ConfigError, match=r"train.device='cuda', but PyTorch .* sees no CUDA"):
        training.train(config, progress=False)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("device", "gpu", r"train.device='gpu' is not a device; use auto, cpu, cuda or cuda:N"),
        ("sampler_device", "gpu", r"train.sampler_device='gpu' is not allowed"),
    ],
)
def test_bad_device_settings_are_config_errors(field, value, message):
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig.from_dict({"train": {field: value}})


class _Stop(Exception):
    pass


@pytest.mark.parametrize(
    "train_settings",
    [{}, {"fanout": [4, 4], "batch_size": 16, "sampler_device": "cpu"}],
    ids=["full-batch", "sampled-on-cpu"],
)
def test_nothing_is_left_behind_on_the_cpu(monkeypatch, train_settings):
    """Train on the meta device: the first forward pass records where its inputs, the
    model's parameters and its buffers are; every one must be on the training device."""
    seen: dict[str, set] = {}

    def record(self, x, graph, nodes=None):
        graphs = graph if isinstance(graph, list) else [graph]
        seen["inputs"] = {x.device, nodes.ids.device, nodes.degree.device}
        seen["inputs"] |= {getattr(g, "edge_index", g).device for g in graphs}
        seen["model"] = {t.device for t in [*self.parameters(), *self.buffers()]}
        raise _Stop

    monkeypatch.setattr(GNN, "forward", record)
    monkeypatch.setattr(training, "resolve_device", lambda spec: torch.device("meta"))
    config = ExperimentConfig.from_dict(
        {
            "data": {"synthetic": {"num_nodes": 200}},
            "quant": {"scheme": "degree_quant", "options": {"bits": 4}},  # buffers too
            "train": {"epochs": 1, **train_settings},
        }
    )
    with pytest.raises(_Stop):
        training.train(config, progress=False)
    assert seen["inputs"] == {torch.device("meta")}
    assert seen["model"] == {torch.device("meta")}


def test_sampling_on_the_cpu_or_the_device_trains_the_same_model():
    base = {
        "data": {"synthetic": {"num_nodes": 300}},
        "train": {"epochs": 3, "fanout": [5, 5], "batch_size": 64, "device": "cpu"},
    }
    results = []
    for place in ("device", "cpu"):
        config = ExperimentConfig.from_dict(
            base | {"train": base["train"] | {"sampler_device": place}}
        )
        results.append(training.train(config, progress=False)[0].history)
    assert results[0] == results[1]
