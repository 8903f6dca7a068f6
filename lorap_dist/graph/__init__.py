"""Graphs: sources, synthetic generation, partitioning, Arrow storage and sampling."""

from lorap_dist.graph.block import Block, NodeInfo
from lorap_dist.graph.errors import DatasetError
from lorap_dist.graph.storage import Dataset, open_dataset

__all__ = ["Block", "Dataset", "DatasetError", "NodeInfo", "open_dataset"]
