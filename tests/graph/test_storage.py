"""The Arrow dataset directory: files, memory maps, INT8 features, checksums."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from lorap_dist.config import SyntheticConfig
from lorap_dist.graph.errors import DatasetError
from lorap_dist.graph.prepare import PrepareOptions, prepare
from lorap_dist.graph.sources import synthetic_source
from lorap_dist.graph.storage import (
    SPLIT_CODES,
    open_dataset,
    read_array,
    read_columns,
    write_array,
    write_columns,
)
from lorap_dist.quant.integer import dequantize_rows, quantize_rows

CFG = SyntheticConfig(num_nodes=700, num_features=5, num_classes=3, seed=11)


def prepared(tmp_path, features="fp32", parts=3):
    return prepare(
        PrepareOptions(
            out=tmp_path / f"ds-{features}",
            parts=parts,
            partitioner="stream",
            features=features,
            synthetic=CFG,
            use_ray=False,
            progress=False,
        )
    )


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.float32])
@pytest.mark.parametrize("shape", [(0,), (13,), (13, 1), (13, 7)])
def test_arrays_round_trip_as_memory_maps(tmp_path, dtype, shape):
    values = (np.arange(int(np.prod(shape))) % 100 - 50).astype(dtype).reshape(shape)
    write_array(tmp_path / "a.arrow", values)
    back = read_array(tmp_path / "a.arrow")
    assert back.dtype == dtype and back.shape == shape
    np.testing.assert_array_equal(back, values)
    if values.size:
        assert isinstance(back, np.memmap)
        tensor = torch.from_numpy(back)  # writable copy-on-write view, no warning
        tensor.fill_(1)
        np.testing.assert_array_equal(read_array(tmp_path / "a.arrow"), values)


def test_files_are_plain_arrow_ipc(tmp_path):
    write_columns(tmp_path / "t.arrow", {"x": np.ones((4, 3), np.float32), "i": np.arange(4)})
    table = pa.ipc.open_file(str(tmp_path / "t.arrow")).read_all()
    assert table.schema.field("x").type == pa.list_(pa.float32(), 3)
    assert table.column("i").to_pylist() == [0, 1, 2, 3]
    assert set(read_columns(tmp_path / "t.arrow")) == {"x", "i"}


def test_stored_int8_rows_are_the_one_per_row_codec_with_exact_zero_rows(tmp_path):
    """Prepared INT8 features are quantize_rows' codes and scales: symmetric per row,
    half-even rounding, and an all-zero row decodes to exact zeros."""
    x = np.array([[254.0, 1.0, 3.0, -254.0], [0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    codes, scale = quantize_rows(torch.from_numpy(x))
    assert scale[0].item() == 2.0 and 0.0 < scale[1].item() < 1e-37
    assert codes.tolist() == [[127, 0, 2, -127], [0, 0, 0, 0]]  # 0.5 -> 0, 1.5 -> 2
    assert dequantize_rows(codes, scale)[1].tolist() == [0.0] * 4
    ds = open_dataset(prepared(tmp_path, "int8"), verify=True)
    for rank in range(ds.num_parts):
        part = ds.part(rank)
        stored = part.features_fp32()
        again_codes, again_scales = quantize_rows(stored)
        torch.testing.assert_close(dequantize_rows(again_codes, again_scales), stored)
        torch.testing.assert_close(again_scales, part.scales)  # the stored grid, again
        assert int((again_codes.int() - part.features.int()).abs().max()) <= 1


@pytest.mark.parametrize("features", ["fp32", "int8"])
def test_every_array_round_trips(tmp_path, features):
    ds = open_dataset(prepared(tmp_path, features), verify=True)
    source = synthetic_source(CFG)
    x = source.feature_rows(0, CFG.num_nodes)
    node_map = ds.node_map
    assert ds.indptr.dtype == torch.int64 and ds.indices.dtype == torch.int32
    got = ds.features_of(node_map).numpy()
    if features == "fp32":
        np.testing.assert_array_equal(got, x)
    else:
        bound = np.abs(x).max(axis=1, keepdims=True) / 127 / 2
        assert np.all(np.abs(got - x) <= bound + 1e-6)
        assert ds.part(0).features.dtype == torch.int8
    np.testing.assert_array_equal(ds.labels_of(node_map).numpy(), source.labels)
    for name in SPLIT_CODES:
        expected = np.sort(node_map[torch.from_numpy(source.splits[name])].numpy())
        np.testing.assert_array_equal(ds.split_ids(name).numpy(), expected)
    np.testing.assert_array_equal(ds.original_ids(node_map).numpy(), np.arange(CFG.num_nodes))


def test_parts_own_their_ranges(tmp_path):
    ds = open_dataset(prepared(tmp_path))
    book = ds.partition_book
    assert book[0, 0] == 0 and book[-1, 1] == ds.num_nodes
    assert torch.equal(book[1:, 0], book[:-1, 1])
    for r in range(ds.num_parts):
        part = ds.part(r)
        assert part.features.shape == (part.num_nodes, CFG.num_features)
        ids = torch.arange(part.start, part.end)
        assert torch.equal(ds.owner_of(ids), torch.full_like(ids, r))
        assert torch.equal(ds.features_of(ids), part.features_fp32())
    meta = json.loads((ds.path / "meta.json").read_text())
    assert sum(meta["train_per_part"]) == meta["split_sizes"]["train"]


def test_csr_matches_the_original_graph_through_the_node_map(tmp_path):
    from lorap_dist.graph.preprocess import build_csr

    ds = open_dataset(prepared(tmp_path))
    original = build_csr(synthetic_source(CFG))
    m = ds.node_map.numpy()
    expected = sorted(zip(m[original.indices].tolist(), m[original.rows()].tolist(), strict=True))
    rows = torch.repeat_interleave(torch.arange(ds.num_nodes), ds.indptr.diff())
    assert sorted(zip(ds.indices.tolist(), rows.tolist(), strict=True)) == expected


def test_checksums_detect_a_flipped_byte(tmp_path):
    out = prepared(tmp_path)
    path = out / "parts/part-00001/features.arrow"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    open_dataset(out)  # opening without verify does not read everything
    corrupt = r"part-00001/features\.arrow is corrupt: its checksum does not match"
    with pytest.raises(DatasetError, match=corrupt):
        open_dataset(out, verify=True)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [("truncate", r"is truncated or damaged: \d+ bytes, the manifest says \d+"),
     ("delete", "is missing")],
)  # fmt: skip
def test_verify_names_a_truncated_or_missing_file(tmp_path, damage, expected):
    out = prepared(tmp_path)
    path = out / "parts/part-00000/features.arrow"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:-7])
    else:
        path.unlink()
    with pytest.raises(DatasetError, match=r"part-00000/features\.arrow " + expected):
        open_dataset(out, verify=True)


def test_format_version_is_checked(tmp_path):
    out = prepared(tmp_path)
    meta = json.loads((out / "meta.json").read_text())
    meta["format_version"] = 99
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="'format_version' is 99"):
        open_dataset(out)
    with pytest.raises(DatasetError, match="meta.json is missing"):
        open_dataset(tmp_path)
