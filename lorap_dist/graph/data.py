"""An in-memory node-classification graph: the form every source produces."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class GraphData:
    """A graph with node features, labels and a train/valid/test split.

    Args:
        edge_index: ``[2, E]`` long, row 0 sources, row 1 destinations.
        x: ``[N, F]`` float node features.
        y: ``[N]`` long labels in ``0..num_classes-1``.
        train_idx, valid_idx, test_idx: long node indices of each split.
        num_classes: number of classes.
    """

    edge_index: Tensor
    x: Tensor
    y: Tensor
    train_idx: Tensor
    valid_idx: Tensor
    test_idx: Tensor
    num_classes: int

    @property
    def num_nodes(self) -> int:
        return self.x.size(0)

    @property
    def num_edges(self) -> int:
        return self.edge_index.size(1)

    def to(self, device: torch.device | str) -> GraphData:
        """This graph with every tensor on ``device`` (itself when already there)."""
        if self.x.device == torch.device(device):
            return self
        return GraphData(
            edge_index=self.edge_index.to(device),
            x=self.x.to(device),
            y=self.y.to(device),
            train_idx=self.train_idx.to(device),
            valid_idx=self.valid_idx.to(device),
            test_idx=self.test_idx.to(device),
            num_classes=self.num_classes,
        )

    def in_degree(self) -> Tensor:
        """``[N]`` long in-degree of every node (edges counted into row 1)."""
        return torch.bincount(self.edge_index[1], minlength=self.num_nodes)
