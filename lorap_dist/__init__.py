"""lorap-dist: distributed training of quantized GNNs with Low-Rank Aggregation Prompting.

The package reads in the order data flows: ``graph`` (sources, partitioning, storage,
sampling) -> ``quant`` + ``prompt`` + ``nn`` (the model) -> ``dist`` (workers, exchange,
checkpoints) -> ``tune`` -> the ``jobs/`` entry points. Lower floors never import higher ones.
"""

__version__ = "0.1.0"
