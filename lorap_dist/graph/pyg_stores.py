"""PyG ``FeatureStore`` and ``GraphStore`` over a prepared dataset directory (read-only).

So PyG tools read the memory-mapped dataset directly::

    ds = open_dataset("data/products-4")
    features, graph = DatasetFeatureStore(ds), DatasetGraphStore(ds)
    x = features.get_tensor(group_name=None, attr_name="x", index=torch.tensor([0, 5]))
    row, colptr = graph.get_edge_index(edge_type=None, layout="csc")

Node IDs are the dataset's global IDs. Tensors: ``x`` (float32, dequantized if stored as
INT8), ``y`` (int64 labels) and ``split`` (int8 codes). Edges: the in-edge CSR is PyG's CSC
layout (``row`` = source, ``colptr`` over destinations); COO is materialized on request.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.data import EdgeAttr, FeatureStore, GraphStore, TensorAttr
from torch_geometric.typing import EdgeTensorType

from lorap_dist.graph.storage import Dataset

_NODE_TENSORS = ("x", "y", "split")


class DatasetFeatureStore(FeatureStore):
    """Node tensors of a :class:`~lorap_dist.graph.storage.Dataset`, gathered across parts."""

    def __init__(self, dataset: Dataset) -> None:
        super().__init__()
        self.dataset = dataset

    def _get_tensor(self, attr: TensorAttr) -> Tensor:
        if attr.attr_name not in _NODE_TENSORS:
            raise KeyError(
                f"{attr.attr_name!r} is not stored; a prepared dataset holds the "
                f"node tensors {list(_NODE_TENSORS)}."
            )
        index = attr.index
        if index is None:
            ids = torch.arange(self.dataset.num_nodes)
        elif isinstance(index, slice):
            ids = torch.arange(self.dataset.num_nodes)[index]
        else:
            ids = torch.as_tensor(index, dtype=torch.int64)
        if attr.attr_name == "x":
            return self.dataset.features_of(ids)
        if attr.attr_name == "y":
            return self.dataset.labels_of(ids)
        owners = self.dataset.owner_of(ids)
        out = torch.empty(len(ids), dtype=torch.int8)
        for r in torch.unique(owners).tolist():
            where = torch.nonzero(owners == r).flatten()
            part = self.dataset.part(r)
            out[where] = part.split[ids[where] - part.start]
        return out

    def _get_tensor_size(self, attr: TensorAttr) -> tuple[int, ...] | None:
        if attr.attr_name == "x":
            return (self.dataset.num_nodes, self.dataset.num_features)
        if attr.attr_name in _NODE_TENSORS:
            return (self.dataset.num_nodes,)
        return None

    def get_all_tensor_attrs(self) -> list[TensorAttr]:
        return [TensorAttr(group_name=None, attr_name=name) for name in _NODE_TENSORS]

    def _put_tensor(self, tensor: Tensor, attr: TensorAttr) -> bool:
        return False  # a prepared dataset is read-only

    def _remove_tensor(self, attr: TensorAttr) -> bool:
        return False


class DatasetGraphStore(GraphStore):
    """The replicated topology of a :class:`~lorap_dist.graph.storage.Dataset`."""

    def __init__(self, dataset: Dataset) -> None:
        super().__init__()
        self.dataset = dataset

    def _get_edge_index(self, edge_attr: EdgeAttr) -> EdgeTensorType | None:
        row, colptr = self.dataset.indices.to(torch.int64), self.dataset.indptr
        if edge_attr.layout.value == "csc":
            return row, colptr
        col = torch.repeat_interleave(torch.arange(self.dataset.num_nodes), colptr.diff())
        if edge_attr.layout.value == "coo":
            return row, col
        order = torch.argsort(row, stable=True)  # CSR: grouped by source
        counts = torch.bincount(row, minlength=self.dataset.num_nodes)
        rowptr = torch.zeros(self.dataset.num_nodes + 1, dtype=torch.int64)
        rowptr[1:] = torch.cumsum(counts, 0)
        return rowptr, col[order]

    def get_all_edge_attrs(self) -> list[EdgeAttr]:
        n = self.dataset.num_nodes
        return [EdgeAttr(edge_type=None, layout="csc", size=(n, n))]

    def _put_edge_index(self, edge_index: EdgeTensorType, edge_attr: EdgeAttr) -> bool:
        return False  # a prepared dataset is read-only

    def _remove_edge_index(self, edge_attr: EdgeAttr) -> bool:
        return False
