"""Bad input: a clear error naming the file and line (or field), and nothing half-written."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest

from lorap_dist.config import SyntheticConfig
from lorap_dist.graph.errors import DatasetError
from lorap_dist.graph.prepare import PrepareOptions, prepare
from lorap_dist.graph.synthetic import generate_synthetic
from lorap_dist.testing.ogb_layout import write_csv_gz, write_ogb_dataset

GRAPH = generate_synthetic(SyntheticConfig(num_nodes=60, num_features=3, num_classes=4))


@pytest.fixture
def dataset(tmp_path):
    """A valid dataset in OGB's layout, as ``root/ogbn_arxiv``, for one test to break."""
    return write_ogb_dataset(tmp_path / "root", "ogbn-arxiv", GRAPH)


def read_lines(path) -> list[str]:
    with gzip.open(path, "rt") as f:
        return f.read().splitlines()


def replace_line(path, number: int, text: str) -> None:
    lines = read_lines(path)
    lines[number - 1] = text
    write_csv_gz(path, lines)


def prepare_fails(tmp_path, source: str, match: str, **options) -> None:
    """Prepare must raise a DatasetError matching ``match`` and leave no output behind."""
    out = tmp_path / "out" / "dataset"
    with pytest.raises(DatasetError, match=match):
        prepare(
            PrepareOptions(
                out=out,
                source=source,
                root=tmp_path / "root",
                use_ray=False,
                progress=False,
                **options,
            )
        )
    assert not out.exists()
    assert list((tmp_path / "out").iterdir()) == []  # no staging directory either


def test_missing_raw_file(tmp_path, dataset):
    (dataset / "raw" / "node-feat.csv.gz").unlink()
    prepare_fails(tmp_path, f"dir:{dataset}", r"raw/node-feat\.csv\.gz is missing")


def test_missing_raw_file_of_an_ogb_dataset_is_not_downloaded(tmp_path, dataset):
    (dataset / "raw" / "edge.csv.gz").unlink()
    prepare_fails(tmp_path, "ogbn-arxiv", r"raw/edge\.csv\.gz is missing.*delete the directory")


def test_wrong_column_count(tmp_path, dataset):
    replace_line(dataset / "raw" / "edge.csv.gz", 7, "1,2,3")
    prepare_fails(tmp_path, f"dir:{dataset}", r"edge\.csv\.gz line 7: expected 2 .* found 3")


def test_wrong_column_count_through_the_ogb_loader(tmp_path, dataset):
    replace_line(dataset / "raw" / "edge.csv.gz", 4, "5")
    prepare_fails(tmp_path, "ogbn-arxiv", r"edge\.csv\.gz line 4: expected 2 .* found 1")


@pytest.mark.parametrize("value", ["abc", "1.5"])
def test_non_integer_node_id(tmp_path, dataset, value):
    replace_line(dataset / "raw" / "edge.csv.gz", 9, f"3,{value}")
    prepare_fails(tmp_path, f"dir:{dataset}", rf"edge\.csv\.gz line 9: '{value}' is not an integer")


@pytest.mark.parametrize("source", ["dir", "ogbn-arxiv"])
@pytest.mark.parametrize("edge", ["60,2", "-1,2"])
def test_out_of_range_node_id(tmp_path, dataset, source, edge):
    replace_line(dataset / "raw" / "edge.csv.gz", 12, edge)
    spec = f"dir:{dataset}" if source == "dir" else source
    prepare_fails(tmp_path, spec, r"edge\.csv\.gz line 12: edge .* outside 0\.\.59")


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_features(tmp_path, dataset, value):
    replace_line(dataset / "raw" / "node-feat.csv.gz", 33, f"0.5,{value},1.0")
    prepare_fails(tmp_path, f"dir:{dataset}", rf"node-feat\.csv\.gz line 33: feature value {value}")


def test_label_count_not_matching_node_count(tmp_path, dataset):
    write_csv_gz(dataset / "raw" / "node-label.csv.gz", GRAPH.y.numpy()[:-2].reshape(-1, 1))
    prepare_fails(tmp_path, f"dir:{dataset}", r"node-label\.csv\.gz has 58 rows .* 60 nodes")


def test_feature_row_count_not_matching_node_count(tmp_path, dataset):
    write_csv_gz(dataset / "raw" / "num-node-list.csv.gz", np.array([[61]]))
    prepare_fails(tmp_path, f"dir:{dataset}", r"node-feat\.csv\.gz has 60 rows .* 61 nodes")


@pytest.mark.parametrize("source", ["dir", "ogbn-arxiv"])
def test_split_index_out_of_range(tmp_path, dataset, source):
    replace_line(dataset / "split" / "time" / "valid.csv.gz", 2, "60")
    spec = f"dir:{dataset}" if source == "dir" else source
    prepare_fails(tmp_path, spec, r"split/time/valid\.csv\.gz line 2: node 60 is out of range")


def test_more_parts_than_nodes(tmp_path, dataset):
    prepare_fails(tmp_path, f"dir:{dataset}", r"--parts 61 is more than the 60 nodes", parts=61)


def test_incomplete_ogb_download_is_refused_not_prompted(tmp_path, dataset):
    (dataset / "RELEASE_v1.txt").unlink()
    prepare_fails(tmp_path, "ogbn-arxiv", r"RELEASE_v1\.txt is missing")


def test_split_folder_must_be_unambiguous(tmp_path, dataset):
    shutil.copytree(dataset / "split" / "time", dataset / "split" / "random")
    prepare_fails(tmp_path, f"dir:{dataset}", r"exactly one split folder.*\['random', 'time'\]")


@pytest.mark.parametrize("source", ["dir", "ogbn-arxiv"])
def test_a_graph_without_edges_is_refused(tmp_path, dataset, source):
    write_csv_gz(dataset / "raw" / "edge.csv.gz", [])
    write_csv_gz(dataset / "raw" / "num-edge-list.csv.gz", np.array([[0]]))
    spec = f"dir:{dataset}" if source == "dir" else source
    prepare_fails(tmp_path, spec, r"has no edges: a graph neural network aggregates over edges")


@pytest.mark.parametrize("label", ["1000000", "99999999999"])
def test_an_absurd_class_id_is_refused_naming_its_line(tmp_path, dataset, label):
    replace_line(dataset / "raw" / "node-label.csv.gz", 7, label)
    prepare_fails(
        tmp_path, f"dir:{dataset}", rf"node-label\.csv\.gz line 7: label {label} makes \d+ classes"
    )


def test_classes_without_a_node_are_a_warning(tmp_path, dataset):
    labels = GRAPH.y.numpy().copy()
    labels[labels == 1] = 0  # class 1 has no node now
    write_csv_gz(dataset / "raw" / "node-label.csv.gz", labels.reshape(-1, 1))
    options = dict(source=f"dir:{dataset}", use_ray=False, progress=False)
    with pytest.warns(UserWarning, match=r"1 of 4 classes have no node \(e\.g\. \[1\]\)"):
        prepare(PrepareOptions(out=tmp_path / "ds", **options))


def test_a_negative_label_is_printed_as_a_number(tmp_path, dataset):
    replace_line(dataset / "raw" / "node-label.csv.gz", 5, "-2")
    prepare_fails(tmp_path, f"dir:{dataset}", r"line 5: label -2 is not a non-negative integer")


def test_a_short_feature_row_is_named_as_short(tmp_path, dataset):
    replace_line(dataset / "raw" / "node-feat.csv.gz", 21, "0.5,1.0")
    prepare_fails(
        tmp_path, f"dir:{dataset}", r"node-feat\.csv\.gz line 21: expected 3 comma-separated"
    )
