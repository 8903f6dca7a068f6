"""The prepare job end to end: Ray tasks, the CLI entry point, overwrite and interruption."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lorap_dist.cli import add_prepare_arguments, options_from_args
from lorap_dist.config import ConfigError, SyntheticConfig
from lorap_dist.graph import prepare as prepare_module
from lorap_dist.graph.errors import DatasetError
from lorap_dist.graph.prepare import PrepareOptions, prepare
from lorap_dist.graph.preprocess import build_csr
from lorap_dist.graph.sources import synthetic_source
from lorap_dist.graph.storage import open_dataset
from lorap_dist.graph.synthetic import generate_synthetic
from lorap_dist.testing.ogb_layout import write_ogb_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # for `jobs`
CFG = SyntheticConfig(num_nodes=900, num_features=4, seed=8)


@pytest.fixture(scope="module")
def ray_local():
    """One small local Ray instance for every Ray test of this module."""
    ray = pytest.importorskip("ray")
    ray.init(
        num_cpus=2, include_dashboard=False, object_store_memory=128 * 1024**2, log_to_driver=False
    )
    yield ray
    ray.shutdown()


def quick(out: Path, **overrides) -> PrepareOptions:
    options = dict(
        out=out, parts=2, partitioner="random", synthetic=CFG, use_ray=False, progress=False
    )
    return PrepareOptions(**{**options, **overrides})


@pytest.mark.slow
def test_prepare_with_ray_tasks_round_trips_the_graph(tmp_path, ray_local):
    out = prepare(quick(tmp_path / "ds", parts=3, partitioner="stream", use_ray=True))
    ds = open_dataset(out, verify=True)
    source = synthetic_source(CFG)
    m = ds.node_map
    np.testing.assert_array_equal(ds.features_of(m).numpy(), source.feature_rows(0, 900))
    np.testing.assert_array_equal(ds.labels_of(m).numpy(), source.labels)
    original = build_csr(source)
    rows = torch.repeat_interleave(torch.arange(ds.num_nodes), ds.indptr.diff())
    mapped = m.numpy()
    assert sorted(zip(ds.indices.tolist(), rows.tolist(), strict=True)) == sorted(
        zip(mapped[original.indices].tolist(), mapped[original.rows()].tolist(), strict=True)
    )
    assert ds.meta["num_parts"] == 3 and ds.meta["partitioner"] == "stream"
    assert ray_local.is_initialized()  # prepare leaves a Ray it did not start running


@pytest.mark.slow
def test_job_entry_point_prepares_an_ogb_dataset(tmp_path, ray_local):
    from jobs.prepare import main

    graph = generate_synthetic(SyntheticConfig(num_nodes=500, num_features=8, seed=9))
    write_ogb_dataset(tmp_path / "ogb", "ogbn-products", graph)
    out = main(
        [
            "--source",
            "ogbn-products",
            "--root",
            str(tmp_path / "ogb"),
            "--out",
            str(tmp_path / "products"),
            "--parts",
            "2",
            "--partitioner",
            "metis",
            "--features",
            "int8",
            "--no-progress",
        ]
    )
    ds = open_dataset(out, verify=True)
    assert ds.num_classes == 47 and ds.feature_encoding == "int8"
    assert ds.num_edges == graph.num_edges
    x = graph.x.numpy()
    error = np.abs(ds.features_of(ds.node_map).numpy() - x)
    assert np.all(error <= np.abs(x).max(axis=1, keepdims=True) / 254 + 1e-6)


def test_existing_output_is_refused_unless_overwrite(tmp_path):
    out = prepare(quick(tmp_path / "ds"))
    first = json.loads((out / "meta.json").read_text())
    with pytest.raises(DatasetError, match="already exists; pass --overwrite"):
        prepare(quick(out, parts=3))
    prepare(quick(out, parts=3, overwrite=True))
    assert open_dataset(out).num_parts == 3 != first["num_parts"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


@pytest.mark.parametrize("existing", [False, True])
def test_interrupted_run_leaves_nothing_that_looks_complete(tmp_path, monkeypatch, existing):
    out = tmp_path / "ds"
    if existing:
        prepare(quick(out))
    before = (out / "meta.json").read_text() if existing else None

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare_module, "write_meta", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare(quick(out, parts=3, overwrite=True))
    if existing:  # the old dataset is untouched
        assert (out / "meta.json").read_text() == before
        open_dataset(out, verify=True)
    else:
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == (["ds"] if existing else [])


def test_a_killed_run_leaves_only_a_hidden_staging_directory(tmp_path):
    """A run killed before the rename leaves ``.ds.tmp-*``, never something at ``out``."""
    staging = tmp_path / ".ds.tmp-deadbeef"
    staging.mkdir()
    with pytest.raises(DatasetError, match="meta.json is missing"):
        open_dataset(staging)
    assert not (tmp_path / "ds").exists()


def test_command_line_flags():
    parser = argparse.ArgumentParser()
    add_prepare_arguments(parser)
    args = parser.parse_args(
        [
            "--out",
            "x",
            "--source",
            "ogbn-arxiv",
            "--parts",
            "4",
            "--partitioner",
            "stream",
            "--features",
            "int8",
            "--no-symmetrize",
            "--overwrite",
        ]
    )
    options = options_from_args(args)
    assert (options.parts, options.partitioner, options.features) == (4, "stream", "int8")
    assert not options.symmetrize and options.drop_self_loops and options.overwrite
    with pytest.raises(ConfigError, match="--parts 0 must be"):
        PrepareOptions(out="x", parts=0)


def test_directed_graph_with_self_loops_is_partitioned_on_its_undirected_form(tmp_path):
    cfg = SyntheticConfig(num_nodes=60, avg_degree=40.0, seed=2)  # hubs: self loops occur
    out = prepare(
        quick(
            tmp_path / "ds",
            partitioner="metis",
            synthetic=cfg,
            symmetrize=False,
            drop_self_loops=False,
        )
    )
    ds = open_dataset(out)
    rows = torch.repeat_interleave(torch.arange(ds.num_nodes), ds.indptr.diff())
    assert bool((rows == ds.indices.long()).any())  # self loops kept
    assert ds.num_edges == build_csr(synthetic_source(cfg), False, False).num_edges


HOLD_LOCK = """
import fcntl, sys, time
handle = open(sys.argv[1], "a+")
fcntl.flock(handle, fcntl.LOCK_EX)
handle.write("process of the test"); handle.flush()
print("locked", flush=True)
time.sleep(60)
"""


def test_temporaries_of_killed_prepares_are_removed_and_a_running_one_is_respected(tmp_path):
    import subprocess

    stale = tmp_path / ".ds.tmp-123-deadbeef"  # its prepare was killed: nobody holds the lock
    (stale / "scratch").mkdir(parents=True)
    (stale / prepare_module.STAGING_LOCK).write_text("process 123 on elsewhere")
    (stale / "scratch" / "x.npy").write_bytes(b"0" * 1000)
    legacy = tmp_path / ".ds.tmp-cafebabe"  # an older version's temporary, without a lock
    legacy.mkdir()
    with pytest.warns(UserWarning, match=r"\.ds\.tmp-cafebabe is a temporary of an interrupted"):
        out = prepare(quick(tmp_path / "ds"))
    assert not stale.exists() and legacy.exists()
    open_dataset(out, verify=True)
    assert not (out / prepare_module.STAGING_LOCK).exists()

    running = tmp_path / ".other.tmp-456-0badf00d"
    running.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(running / prepare_module.STAGING_LOCK)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(DatasetError, match=r"another prepare \(process of the test\)"):
            prepare(quick(tmp_path / "other"))
        assert not (tmp_path / "other").exists() and running.exists()
    finally:
        holder.kill()
        holder.wait()
    prepare(quick(tmp_path / "other"))  # its process is gone: the temporary is stale now
    assert not running.exists()


def test_small_graphs_prepare_without_ray(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a small graph started Ray")

    monkeypatch.setattr(prepare_module, "ray_session", refuse)
    options = PrepareOptions(out=tmp_path / "ds", parts=2, partitioner="random", synthetic=CFG)
    assert options.use_ray is None
    open_dataset(prepare(options), verify=True)
    big = PrepareOptions(out="x", parts=2, use_ray=None)
    assert prepare_module._uses_ray(big, prepare_module.RAY_MIN_NODES)
    assert not prepare_module._uses_ray(PrepareOptions(out="x", parts=1), 10**7)


def test_a_full_disk_while_preparing_is_a_clear_error_and_leaves_nothing(tmp_path, monkeypatch):
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(prepare_module, "write_part", full)
    with pytest.raises(DatasetError, match=r"no space left on the device .* nothing was left"):
        prepare(quick(tmp_path / "ds"))
    assert list(tmp_path.iterdir()) == []


def test_too_little_free_space_is_refused_before_writing(tmp_path, monkeypatch):
    import collections

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(prepare_module.shutil, "disk_usage", lambda path: usage(1, 1, 10_000))
    with pytest.raises(DatasetError, match=r"GiB free, and preparing 900 nodes x 4 features"):
        prepare(quick(tmp_path / "ds"))
    assert list(tmp_path.iterdir()) == []
