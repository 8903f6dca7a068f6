"""Single-graph node-classification datasets read by PyG's own dataset classes, offline.

``planetoid:NAME`` (Cora, CiteSeer, PubMed) is read by
:class:`torch_geometric.datasets.Planetoid` from PyG's raw layout::

    root/Cora/raw/ind.cora.{x, tx, allx, y, ty, ally, graph, test.index}
    root/Cora/processed/           (PyG caches its processed tensors here)

``pyg:CLASS:NAME`` (or ``pyg:CLASS`` for classes without a name argument) reads any other
dataset class of ``torch_geometric.datasets`` that holds one graph with node labels and
masks (``WikiCS``, ``Amazon``, ``Coauthor``, ...), the same way. The raw files must already be
in place: PyG would download missing ones, which this source refuses with an error naming
each missing file and where to get it. With the raw files present PyG processes them
without touching the network.

The split is the dataset's own: Planetoid's public split (20 labelled nodes per class, 500
validation, 1,000 test nodes) by default. Classes with several splits (mask columns) use
the first.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import torch

from lorap_dist.graph.errors import DatasetError
from lorap_dist.graph.graph_source import GraphSource
from lorap_dist.locks import waiting_lock

PLANETOID_NAMES = ("Cora", "CiteSeer", "PubMed")
PLANETOID_RAW = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")
PLANETOID_WHERE = (
    "the Planetoid authors' repository (github.com/kimiyoung/planetoid, folder data/) keeps "
    "them for Cora and CiteSeer"
)


def planetoid_name(name: str) -> str:
    """The canonical spelling of a Planetoid dataset name (case-insensitive match)."""
    for known in PLANETOID_NAMES:
        if name.lower() == known.lower():
            return known
    raise DatasetError(
        f"planetoid dataset {name!r} is not known; use one of {list(PLANETOID_NAMES)}."
    )


def planetoid_raw_files(root: str | Path, name: str) -> list[Path]:
    """The raw files PyG's ``Planetoid`` reads for ``name`` under ``root``."""
    name = planetoid_name(name)
    raw = Path(root) / name / "raw"
    return [raw / f"ind.{name.lower()}.{suffix}" for suffix in PLANETOID_RAW]


def offline_dataset_class(cls: type, where: str = f"for Planetoid, {PLANETOID_WHERE}") -> type:
    """PyG dataset class ``cls`` with its download replaced by an error that names the
    missing raw files and ``where`` the public copies are kept, and its processing done
    under a lock, so processes that open a fresh dataset at once process it once."""

    def refuse_download(self) -> None:
        missing = [p for p in self.raw_paths if not Path(p).exists()]
        raise DatasetError(
            f"{cls.__name__} needs its raw files under {self.raw_dir}; missing: "
            f"{', '.join(Path(p).name for p in missing)}. This project never downloads at run "
            f"time: copy the dataset's public raw files there ({where})."
        )

    def process_once(self) -> None:
        # Processes that open one dataset at once (a benchmark's worker pool, the workers of
        # one node) would each write processed/ and read the others' half-written files:
        # one processes it while the rest wait, then find it done.
        with waiting_lock(Path(self.processed_dir).parent / ".processing.lock"):
            cls._process(self)

    return type(cls.__name__, (cls,), {"download": refuse_download, "_process": process_once})


def load_pyg_dataset(class_name: str, name: str | None, root: str | Path):
    """The first graph of ``torch_geometric.datasets.<class_name>`` under ``root``, offline."""
    import torch_geometric.datasets as datasets

    cls = getattr(datasets, class_name, None)
    if not isinstance(cls, type):
        raise DatasetError(
            f"torch_geometric.datasets has no dataset class {class_name!r}; write the class "
            "name as PyG spells it, e.g. 'pyg:Planetoid:Cora' or 'pyg:WikiCS'."
        )
    takes_name = "name" in inspect.signature(cls.__init__).parameters
    if takes_name and not name:
        raise DatasetError(f"{class_name} needs a dataset name: write 'pyg:{class_name}:NAME'.")
    if not takes_name and name:
        raise DatasetError(f"{class_name} takes no dataset name; write 'pyg:{class_name}'.")
    kwargs = {"root": str(root)}
    if class_name == "Planetoid":
        name = planetoid_name(name)
        missing = [p for p in planetoid_raw_files(root, name) if not p.exists()]
        if missing:
            raise DatasetError(
                f"Planetoid {name} needs its raw files in {missing[0].parent}; missing: "
                f"{', '.join(p.name for p in missing)}. This project never downloads at run "
                f"time: copy them there ({PLANETOID_WHERE})."
            )
    if takes_name:
        kwargs["name"] = name
    try:
        dataset = offline_dataset_class(cls)(**kwargs)
    except DatasetError:
        raise
    except Exception as exc:  # a malformed raw file fails inside PyG's reader
        raise DatasetError(
            f"{class_name}{'' if name is None else f' {name}'} under {root}: PyG could not read "
            f"the raw files ({type(exc).__name__}: {exc}). Replace them with intact copies and "
            "delete the processed/ folder beside them."
        ) from exc
    if len(dataset) != 1:
        raise DatasetError(
            f"{class_name} holds {len(dataset)} graphs; node classification needs a "
            "single-graph dataset."
        )
    return dataset[0]


def _mask(data, names: tuple[str, ...], where: str) -> np.ndarray:
    for key in names:
        mask = getattr(data, key, None)
        if mask is not None:
            mask = mask if mask.dim() == 1 else mask[:, 0]  # several splits: the first
            return torch.nonzero(mask, as_tuple=True)[0].numpy().astype(np.int64)
    raise DatasetError(f"{where} has no {names[0]}; it has no split to train on.")


def pyg_source(class_name: str, name: str | None, root: str | Path = "data") -> GraphSource:
    """A PyG single-graph dataset as a :class:`GraphSource` (see the module docstring)."""
    data = load_pyg_dataset(class_name, name, root)
    where = f"{class_name}{'' if name is None else ':' + name}"
    if data.x is None or data.y is None:
        raise DatasetError(f"{where} has no node features or labels; it cannot train.")
    labels = data.y.view(-1).numpy().astype(np.int64)
    x = data.x.to(torch.float32).numpy()
    splits = {
        "train": _mask(data, ("train_mask",), where),
        "valid": _mask(data, ("val_mask", "valid_mask"), where),
        "test": _mask(data, ("test_mask",), where),
    }
    edges = data.edge_index.numpy()
    return GraphSource(
        name=where if class_name != "Planetoid" else f"planetoid:{planetoid_name(name)}",
        num_nodes=int(data.num_nodes),
        num_features=x.shape[1],
        num_classes=int(labels.max()) + 1,
        labels=labels,
        splits=splits,
        edge_chunks=lambda: iter([edges]),
        feature_rows=lambda start, end: x[start:end],
        where_edge=lambda j: f"{where} edge {j}",
        where_node=lambda i: f"{where} node {i}",
    )
