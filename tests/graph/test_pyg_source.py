"""PyG dataset sources: PyG's real Planetoid reader on raw files in the real format."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lorap_dist.config import ConfigError, DataConfig, ExperimentConfig
from lorap_dist.graph.errors import DatasetError
from lorap_dist.graph.sources import open_source
from lorap_dist.graph.transforms import normalize_features, transform_source
from lorap_dist.testing.planetoid_layout import write_planetoid_raw

N, F, C, TRAIN, TEST = 560, 12, 3, 15, 40


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, C, N)
    features = (rng.random((N, F)) < 0.2).astype(np.float32)
    features[5] = 0  # an all-zero row, as bag-of-words data has
    edges = rng.integers(0, N, (2, 3 * N))
    edges = edges[:, edges[0] != edges[1]]
    return features, labels, edges


@pytest.fixture
def no_download(monkeypatch):
    """Fail the test if anything opens a network connection."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("a dataset source tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("spec", ["planetoid:Cora", "planetoid:cora", "pyg:Planetoid:Cora"])
def test_planetoid_reads_the_raw_files_with_the_public_split(tmp_path, arrays, no_download, spec):
    features, labels, edges = arrays
    write_planetoid_raw(tmp_path, "Cora", features, labels, edges, TRAIN, TEST)
    for _attempt in range(2):  # 1st: raw pickles; 2nd: PyG's processed cache
        source = open_source(spec, root=tmp_path)
        assert (tmp_path / "Cora" / "processed").is_dir()
        assert (source.num_nodes, source.num_features, source.num_classes) == (N, F, C)
        np.testing.assert_array_equal(source.feature_rows(0, N), features)
        np.testing.assert_array_equal(source.labels, labels)
        np.testing.assert_array_equal(source.splits["train"], np.arange(TRAIN))
        np.testing.assert_array_equal(source.splits["valid"], np.arange(TRAIN, TRAIN + 500))
        np.testing.assert_array_equal(source.splits["test"], np.arange(N - TEST, N))
    graph = source.to_graph_data()
    expected = {(a, b) for a, b in edges.T.tolist()} | {(b, a) for a, b in edges.T.tolist()}
    assert set(map(tuple, graph.edge_index.T.tolist())) == expected


def test_a_missing_raw_file_names_it_and_where_to_get_it(tmp_path, arrays, no_download):
    raw = write_planetoid_raw(tmp_path, "CiteSeer", *arrays, TRAIN, TEST)
    (raw / "ind.citeseer.graph").unlink()
    with pytest.raises(DatasetError, match=r"missing: ind\.citeseer\.graph.*kimiyoung/planetoid"):
        open_source("planetoid:CiteSeer", root=tmp_path)
    with pytest.raises(DatasetError, match=r"missing: ind\.pubmed\.x, ind\.pubmed\.tx"):
        open_source("planetoid:PubMed", root=tmp_path)


def test_a_corrupt_raw_file_is_a_dataset_error(tmp_path, arrays, no_download):
    raw = write_planetoid_raw(tmp_path, "Cora", *arrays, TRAIN, TEST)
    (raw / "ind.cora.allx").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match=r"could not read the raw files.*processed/"):
        open_source("planetoid:Cora", root=tmp_path)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("planetoid:Pubmedd", r"planetoid dataset 'Pubmedd' is not known"),
        ("pyg:NoSuchClass:x", r"no dataset class 'NoSuchClass'"),
        ("pyg:Planetoid", r"Planetoid needs a dataset name"),
        ("pyg:WikiCS:x", r"WikiCS takes no dataset name"),
    ],
)
def test_bad_pyg_specs_are_clear_errors(tmp_path, spec, message):
    with pytest.raises(DatasetError, match=message):
        open_source(spec, root=tmp_path)


def test_a_pyg_class_without_raw_files_refuses_to_download(tmp_path):
    with pytest.raises(DatasetError, match=r"WikiCS needs its raw files.*never downloads"):
        open_source("pyg:WikiCS", root=tmp_path)


def test_normalize_features_is_pygs_transform():
    from torch_geometric.data import Data
    from torch_geometric.transforms import NormalizeFeatures

    x = torch.rand(50, 7) - 0.3
    x[3] = 0
    expected = NormalizeFeatures()(Data(x=x.clone())).x
    assert torch.equal(normalize_features(x), expected)
    assert not torch.equal(x, expected)  # the input is left alone


def test_a_transformed_source_equals_the_transform_of_the_whole_matrix(
    tmp_path, arrays, monkeypatch
):
    import lorap_dist.graph.transforms as transforms

    monkeypatch.setattr(transforms, "FEATURE_CHUNK", 100)  # several chunks
    write_planetoid_raw(tmp_path, "Cora", *arrays, TRAIN, TEST)
    source = open_source("planetoid:Cora", root=tmp_path)
    expected = normalize_features(torch.from_numpy(source.feature_rows(0, N))).numpy()
    transformed = transform_source(source, "normalize_features")
    np.testing.assert_array_equal(transformed.feature_rows(0, N), expected)
    np.testing.assert_array_equal(transformed.feature_rows(230, 330), expected[230:330])


def test_data_config_spellings_and_default_transform():
    assert DataConfig(source="planetoid:Cora") == DataConfig(source="planetoid", name="Cora")
    assert DataConfig(source="planetoid", name="Cora").spec == "planetoid:Cora"
    assert DataConfig(source="pyg:Amazon:Photo").spec == "pyg:Amazon:Photo"
    assert DataConfig(source="planetoid", name="Cora").resolved_transform == "normalize_features"
    assert DataConfig(source="synthetic").resolved_transform == "none"
    assert DataConfig(source="planetoid:Cora", transform="none").resolved_transform == "none"
    with pytest.raises(ConfigError, match=r"needs data.name"):
        DataConfig(source="planetoid")
    with pytest.raises(ConfigError, match=r"names the dataset and data.name='CiteSeer'"):
        DataConfig(source="planetoid:Cora", name="CiteSeer")
    with pytest.raises(ConfigError, match=r"data.transform='center'"):
        DataConfig(transform="center")


def test_training_loads_planetoid_with_its_transform(tmp_path, arrays, no_download):
    from lorap_dist.train import load_graph

    features, labels, edges = arrays
    write_planetoid_raw(tmp_path, "Cora", features, labels, edges, TRAIN, TEST)
    data = {"source": "planetoid:Cora", "root": str(tmp_path)}
    graph = load_graph(ExperimentConfig.from_dict({"data": data}))
    expected = normalize_features(torch.from_numpy(features))
    assert torch.equal(graph.x, expected)
    raw = load_graph(ExperimentConfig.from_dict({"data": data | {"transform": "none"}}))
    assert torch.equal(raw.x, torch.from_numpy(features))


def test_prepare_bakes_the_planetoid_transform_into_the_dataset(tmp_path, arrays, no_download):
    from lorap_dist.config import ExperimentConfig
    from lorap_dist.graph.prepare import PrepareOptions, prepare
    from lorap_dist.graph.storage import open_dataset
    from lorap_dist.train import load_graph

    features, labels, edges = arrays
    write_planetoid_raw(tmp_path / "raw", "Cora", features, labels, edges, TRAIN, TEST)
    options = dict(
        source="planetoid:Cora", root=tmp_path / "raw", parts=2, partitioner="random",
        use_ray=False, progress=False,
    )  # fmt: skip
    out = prepare(PrepareOptions(out=tmp_path / "ds", **options))
    dataset = open_dataset(out, verify=True)
    assert dataset.meta["transform"] == "normalize_features"
    expected = normalize_features(torch.from_numpy(features))
    assert torch.equal(dataset.features_of(dataset.node_map), expected)
    # Training on the prepared directory takes the features as prepared (no second transform).
    graph = load_graph(ExperimentConfig.from_dict({"data": {"source": "dir", "path": str(out)}}))
    assert torch.equal(graph.x[dataset.node_map], expected)
    mismatch = {"data": {"source": "dir", "path": str(out), "transform": "none"}}
    with pytest.raises(ConfigError, match=r"prepared with transform 'normalize_features'"):
        load_graph(ExperimentConfig.from_dict(mismatch))
    raw = prepare(PrepareOptions(out=tmp_path / "raw-ds", transform="none", **options))
    assert torch.equal(open_dataset(raw).features_of(dataset.node_map), torch.from_numpy(features))


def test_a_non_finite_feature_does_not_spoil_the_other_rows(tmp_path, arrays):
    features, labels, edges = arrays
    features = features.copy()
    features[3, 2] = np.nan
    features[9, 0] = -np.inf
    write_planetoid_raw(tmp_path, "Cora", features, labels, edges, TRAIN, TEST)
    source = transform_source(open_source("planetoid:Cora", root=tmp_path), "normalize_features")
    rows = source.feature_rows(0, N)
    finite = np.isfinite(rows).all(axis=1)
    assert finite.sum() == N - 2 and not finite[3] and not finite[9]
