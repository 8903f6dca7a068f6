"""Shared fixtures for the distributed tests: a tiny prepared dataset directory.

The directory is written with the storage module's own writers in its documented layout,
so these tests do not depend on the (separately tested) prepare pipeline.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
import torch.distributed as dist

from lorap_dist.config import SyntheticConfig
from lorap_dist.graph.data import GraphData
from lorap_dist.graph.storage import (
    SPLIT_CODES,
    part_dir,
    write_array,
    write_columns,
    write_meta,
)
from lorap_dist.graph.synthetic import generate_synthetic
from lorap_dist.quant.integer import quantize_rows

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

TINY = SyntheticConfig(num_nodes=200, avg_degree=6, num_classes=4, num_features=8, seed=0)


def write_dataset(graph: GraphData, path: Path, num_parts: int, encoding: str = "fp32") -> Path:
    """Randomly partition ``graph`` into ``num_parts`` contiguous ID ranges and write it."""
    n = graph.num_nodes
    new_of_old = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    old_of_new = torch.argsort(new_of_old)
    bounds = np.linspace(0, n, num_parts + 1).astype(np.int64)
    src, dst = new_of_old[graph.edge_index[0]], new_of_old[graph.edge_index[1]]
    order = torch.argsort(dst * n + src)
    src, dst = src[order], dst[order]
    indptr = torch.zeros(n + 1, dtype=torch.int64)
    indptr[1:] = torch.cumsum(torch.bincount(dst, minlength=n), 0)
    split = torch.zeros(n, dtype=torch.int8)
    for name in ("train", "valid", "test"):
        split[new_of_old[getattr(graph, f"{name}_idx")]] = SPLIT_CODES[name]
    x, y = graph.x[old_of_new].numpy(), graph.y[old_of_new].numpy()
    write_columns(path / "partition_book.arrow", {"start": bounds[:-1], "end": bounds[1:]})
    write_columns(
        path / "node_map.arrow",
        {"global_of_original": new_of_old.numpy(), "original_of_global": old_of_new.numpy()},
    )
    write_array(path / "topology/indptr.arrow", indptr.numpy())
    write_array(path / "topology/indices.arrow", src.to(torch.int32).numpy())
    for r in range(num_parts):
        a, b = bounds[r], bounds[r + 1]
        d = path / part_dir(r)
        if encoding == "int8":
            codes, scales = quantize_rows(torch.from_numpy(x[a:b]))
            write_array(d / "features.arrow", codes.numpy())
            write_array(d / "scales.arrow", scales.numpy())
        else:
            write_array(d / "features.arrow", x[a:b])
        write_array(d / "labels.arrow", y[a:b].astype(np.int64))
        write_array(d / "split.arrow", split[a:b].numpy())
    write_meta(
        path,
        {
            "num_nodes": n,
            "num_edges": int(src.numel()),
            "num_features": graph.x.size(1),
            "num_classes": graph.num_classes,
            "num_parts": num_parts,
            "partitioner": "random",
            "feature_encoding": encoding,
        },
    )
    return path


@pytest.fixture(scope="session")
def tiny_graph() -> GraphData:
    return generate_synthetic(TINY)


@pytest.fixture(scope="session")
def tiny_dataset(tiny_graph, tmp_path_factory) -> Path:
    """200 nodes, 2 parts, fp32 features."""
    return write_dataset(tiny_graph, tmp_path_factory.mktemp("tiny") / "ds", 2)


@pytest.fixture(scope="session")
def tiny_int8_dataset(tiny_graph, tmp_path_factory) -> Path:
    """200 nodes, 2 parts, INT8 features (codes and per-row scales)."""
    return write_dataset(tiny_graph, tmp_path_factory.mktemp("tiny8") / "ds", 2, "int8")


#: At least MIN_WIDTH features, so integer rows give the float path's sums bit for bit.
WIDE = SyntheticConfig(num_nodes=120, avg_degree=6, num_classes=4, num_features=40, seed=1)


@pytest.fixture(scope="session")
def wide_datasets(tmp_path_factory) -> dict[str, Path]:
    """120 nodes with 40 features in one part, by feature encoding (``fp32``, ``int8``)."""
    graph = generate_synthetic(WIDE)
    root = tmp_path_factory.mktemp("wide")
    return {e: write_dataset(graph, root / e, 1, e) for e in ("fp32", "int8")}


@pytest.fixture
def one_rank_group():
    """A one-process gloo group in this process (every row is local, the collectives run)."""
    if dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """One local Ray instance (2 CPUs) for the module that asks for it."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
        runtime_env={"env_vars": {"RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}},
    )
    yield
    ray.shutdown()


@pytest.fixture
def run_with_a_killed_worker():
    """The function below, for the modules that test a killed worker."""
    return _run_with_a_killed_worker


def _run_with_a_killed_worker(experiment, tmp_path, epochs: int) -> dict:
    """Run ``experiment`` on 2 workers, rank 1 killed at epoch 1 step 1 and Ray allowed one
    restart; checks that the worker did die and the run still trained every epoch, and
    returns the run's summary."""
    from lorap_dist.config import DistConfig
    from lorap_dist.distributed.trainer import run_distributed
    from lorap_dist.testing.faults import KillOnce

    marker = tmp_path / "killed"
    settings = DistConfig(
        num_workers=2, storage_path=str(tmp_path / "runs"), name="faulty", max_failures=1
    )
    result = run_distributed(
        experiment, settings, step_hook=KillOnce(rank=1, epoch=1, step=1, marker=str(marker))
    )
    assert marker.exists()  # the worker did die
    assert result["epochs"] == epochs
    return result


@pytest.fixture
def straight_and_resumed():
    """The function below, for the modules that test a resumed run."""
    return _straight_and_resumed


def _straight_and_resumed(experiment_of, tmp_path, straight_of=None) -> tuple[dict, dict]:
    """Two runs on 2 workers of ``experiment_of(epochs)``: 4 epochs straight, and 2 epochs
    then resumed from their last checkpoint to 4; returns both summaries, checking that
    each trained 4 epochs in the same number of steps and ended with the same weights.
    ``straight_of`` (default ``experiment_of``) builds the straight run's config, for a
    setting the resumed run takes from its checkpoint rather than from its own config."""
    from lorap_dist.config import DistConfig
    from lorap_dist.distributed.checkpoint import load_checkpoint
    from lorap_dist.distributed.trainer import run_distributed

    def settings(name: str) -> DistConfig:
        return DistConfig(num_workers=2, storage_path=str(tmp_path / "runs"), name=name)

    straight = run_distributed((straight_of or experiment_of)(4), settings("straight"))
    first = run_distributed(experiment_of(2), settings("first"))
    resumed = run_distributed(experiment_of(4), settings("resumed"), resume=first["checkpoint"])
    assert straight["epochs"] == resumed["epochs"] == 4
    assert straight["steps"] == resumed["steps"] > 0
    a, b = load_checkpoint(straight["checkpoint"]), load_checkpoint(resumed["checkpoint"])
    assert a.model.keys() == b.model.keys()
    for key in a.model:
        assert torch.equal(a.model[key], b.model[key]), key
    return straight, resumed
