"""Graphs: sources, synthetic generation, partitioning, Arrow storage and sampling."""

from lorap_dist.graph.block import Block, NodeInfo

__all__ = ["Block", "NodeInfo"]
