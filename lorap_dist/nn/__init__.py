"""Quantized message-passing layers (GCN, SAGE, GIN, GAT) and the model stack."""

from lorap_dist.nn.conv import QuantizedConv
from lorap_dist.nn.gat import QGATConv
from lorap_dist.nn.gcn import QGCNConv, block_gcn_norm
from lorap_dist.nn.gin import QGINConv
from lorap_dist.nn.graph_model import GraphGNN, GraphHead
from lorap_dist.nn.linear import QLinear
from lorap_dist.nn.model import GNN, build_model, parameter_counts
from lorap_dist.nn.sage import QSAGEConv

__all__ = [
    "GNN",
    "GraphGNN",
    "GraphHead",
    "QGATConv",
    "QGCNConv",
    "QGINConv",
    "QLinear",
    "QSAGEConv",
    "QuantizedConv",
    "block_gcn_norm",
    "build_model",
    "parameter_counts",
]
