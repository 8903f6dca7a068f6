"""The prepare job: source -> clean CSR -> partition -> relabel -> Arrow dataset directory.

Steps (each with a progress bar):

1. open the source and check it (:mod:`lorap_dist.graph.sources`);
2. build the validated, symmetric, deduplicated CSR (:func:`~.preprocess.build_csr`);
3. stream the feature rows into a scratch memory map, checking every value is finite;
4. partition (``metis``, ``random``, ``stream``) and relabel, so part ``r`` owns a contiguous
   range of global IDs;
5. write the topology and every part, in parallel Ray tasks for graphs large enough to pay
   for starting Ray (else in this process); the tasks get only paths and integers and read
   the arrays from the scratch memory maps (shared through the page cache), so nothing
   large is pickled or copied into Ray's object store;
6. checksum every file into ``meta.json``.

Everything is written into ``.<out>.tmp-<pid>-<id>/`` beside the target and renamed to
``out`` only when complete, so an interrupted run never leaves a directory that looks
complete, and a failed one leaves nothing at all. A later prepare into the same place
removes the temporaries of prepares that were killed (their process is gone), and refuses
to start while another prepare's process is still writing there.

Ray (:func:`lorap_dist.ray_session.ray_session`): a prepare that writes its parts in Ray
tasks joins the cluster the user names (``--address`` or ``RAY_ADDRESS``) and otherwise
starts a private local instance, never attaching to whatever cluster happens to run on the
machine.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lorap_dist.config import ConfigError, SyntheticConfig
from lorap_dist.graph.errors import DatasetError
from lorap_dist.graph.graph_source import FEATURE_CHUNK, GraphSource
from lorap_dist.graph.partition import (
    PARTITIONERS,
    Partitioner,
    Relabeling,
    get_partitioner,
    relabel,
)
from lorap_dist.graph.preprocess import (
    CSRArrays,
    build_csr,
    check_feature_rows,
    edge_cut,
)
from lorap_dist.graph.sources import open_source
from lorap_dist.graph.storage import (
    FEATURE_ENCODINGS,
    SPLIT_CODES,
    index_dtype,
    part_dir,
    write_array,
    write_columns,
    write_meta,
)
from lorap_dist.graph.transforms import TRANSFORMS, transform_source
from lorap_dist.locks import LockHeld, try_lock
from lorap_dist.ray_session import ray_session

GATHER_ROWS = 1 << 16  # feature rows gathered at a time inside a part task
# Below this many nodes the parts are written in this process: starting Ray (seconds) costs
# more than writing a few megabytes of parts one after another.
RAY_MIN_NODES = 200_000


@dataclass
class PrepareOptions:
    """What ``lorap prepare`` does.

    Args:
        source: ``synthetic``, ``ogbn-NAME``, ``dir:PATH``, ``planetoid:NAME`` or
            ``pyg:CLASS[:NAME]``.
        out: the dataset directory to create.
        parts: number of parts P (one per training worker).
        partitioner: ``metis``, ``random`` or ``stream``.
        features: ``fp32`` or ``int8`` (symmetric per-row INT8 + fp32 scale).
        root: where OGB datasets live (and PyG datasets keep their raw files).
        transform: feature transform baked into the dataset, ``none`` or
            ``normalize_features``; ``None`` takes the source's default (``data.transform``).
        split_type: ``split/<type>`` folder to use (default: the dataset's own).
        symmetrize: add reverse edges (always deduplicated).
        drop_self_loops: drop edges ``(v, v)``.
        overwrite: replace ``out`` if it exists.
        synthetic: the generator's config for ``source="synthetic"``.
        seed: seed of the random partitioner.
        workers: CPUs of a local Ray instance (ignored when joining a cluster).
        use_ray: write the parts in parallel Ray tasks; ``False`` runs the same task
            functions one after another in this process; ``None`` (default) uses Ray only
            for several parts of a graph of at least :data:`RAY_MIN_NODES` nodes.
        address: the Ray cluster to join (``ray://...`` or ``HOST:PORT``); ``None`` joins
            ``RAY_ADDRESS`` when set, else starts a private local instance.
        progress: show progress bars.
    """

    out: str | Path
    source: str = "synthetic"
    parts: int = 1
    partitioner: str = "metis"
    features: str = "fp32"
    root: str | Path = "data"
    transform: str | None = None
    split_type: str | None = None
    symmetrize: bool = True
    drop_self_loops: bool = True
    overwrite: bool = False
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    seed: int = 0
    workers: int = 2
    use_ray: bool | None = None
    address: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.partitioner not in PARTITIONERS:
            raise ConfigError(
                f"--partitioner {self.partitioner!r} is not known; choose one of "
                f"{sorted(PARTITIONERS)}."
            )
        if self.features not in FEATURE_ENCODINGS:
            raise ConfigError(
                f"--features {self.features!r} is not known; choose one of "
                f"{list(FEATURE_ENCODINGS)}."
            )
        if not isinstance(self.parts, int) or self.parts < 1:
            raise ConfigError(f"--parts {self.parts!r} must be an integer >= 1.")
        if self.workers < 1:
            raise ConfigError(f"--workers {self.workers} must be >= 1.")
        if self.transform is not None and self.transform not in TRANSFORMS:
            raise ConfigError(
                f"--transform {self.transform!r} is not known; choose one of {list(TRANSFORMS)}."
            )

    @property
    def resolved_transform(self) -> str:
        """``transform``, or the source's default (as ``data.transform`` resolves it)."""
        if self.transform is not None:
            return self.transform
        return "normalize_features" if self.source.startswith("planetoid:") else "none"


def prepare(options: PrepareOptions) -> Path:
    """Run the prepare pipeline; returns the finished dataset directory.

    Raises:
        DatasetError: bad input (named by file and line), or ``out`` exists without
            ``overwrite``. Nothing is left behind on error.
    """
    out = Path(options.out).resolve()
    if out.exists() and not options.overwrite:
        raise DatasetError(
            f"{out} already exists; pass --overwrite to replace it, or choose another --out."
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    clear_stale_temporaries(out)
    staging = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    scratch = staging / "scratch"
    scratch.mkdir(parents=True)
    started = time.perf_counter()
    try:
        with _hold(staging):
            meta = _build(options, staging, scratch)
            shutil.rmtree(scratch)
            meta["prepare_seconds"] = round(time.perf_counter() - started, 2)
            (staging / STAGING_LOCK).unlink()  # still held: nobody takes this for stale
            write_meta(staging, meta)
            _publish(staging, out)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise DatasetError(
                f"no space left on the device holding {out.parent} while preparing {out}; "
                "nothing was left behind. Free space there (the dataset needs about 33 + 4F "
                "bytes per node and 4 per edge, plus as much again while it is written) or "
                "choose another --out."
            ) from exc
        raise
    return out


def _publish(staging: Path, out: Path) -> None:
    """Rename the finished staging directory to ``out``, replacing an old one."""
    if out.exists():
        retired = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(out, retired)
        os.rename(staging, out)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.rename(staging, out)


STAGING_LOCK = ".prepare.lock"


def check_free_space(directory: Path, num_nodes: int, num_features: int) -> None:
    """Refuse to start when the disk cannot hold the features twice (scratch and dataset):
    a memory-mapped scratch file on a full disk fails with SIGBUS, not a clean error."""
    needed = num_nodes * (8 * num_features + 64)
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise DatasetError(
            f"{directory.parent} has {free / 2**30:.1f} GiB free, and preparing "
            f"{num_nodes:,} nodes x {num_features} features needs at least "
            f"{needed / 2**30:.1f} GiB there (features twice while writing, plus the "
            "topology); free space or choose another --out."
        )


def clear_stale_temporaries(out: Path) -> list[Path]:
    """Remove the temporaries killed prepares left beside ``out``; returns what was removed.

    A prepare holds an ``flock`` on ``<temporary>/.prepare.lock`` while it writes; the
    system releases it when the process ends, however it ends. A temporary whose lock can
    be taken is therefore left by a dead prepare.

    Raises:
        DatasetError: another prepare is writing ``out`` now.
    """
    removed = []
    for temporary in sorted(out.parent.glob(f".{out.name}.tmp-*")):
        lock = temporary / STAGING_LOCK
        if not lock.is_file():  # written by an older version, which took no lock
            warnings.warn(
                f"{temporary} is a temporary of an interrupted prepare; delete it if no "
                "prepare is running.",
                stacklevel=2,
            )
            continue
        try:
            handle = try_lock(lock)
        except LockHeld as held:
            raise DatasetError(
                f"another prepare ({held.holder}) is writing {out} now ({temporary} is its "
                "temporary); wait for it to finish, or choose another --out."
            ) from None
        with handle:
            shutil.rmtree(temporary, ignore_errors=True)
        print(f"removed {temporary}, left by a prepare that was killed")
        removed.append(temporary)
    return removed


@contextlib.contextmanager
def _hold(staging: Path) -> Iterator[None]:
    """Hold ``staging``'s lock while this prepare writes it (see
    :func:`clear_stale_temporaries`)."""
    with try_lock(staging / STAGING_LOCK):
        yield


def _build(options: PrepareOptions, staging: Path, scratch: Path) -> dict:
    progress = options.progress
    # 1. Source.
    source = open_source(options.source, options.root, options.synthetic, options.split_type)
    source = transform_source(source, options.resolved_transform)
    check_free_space(staging, source.num_nodes, source.num_features)
    if options.parts > source.num_nodes:
        raise DatasetError(
            f"--parts {options.parts} is more than the {source.num_nodes} nodes "
            f"of {source.name}; use at most {source.num_nodes} parts."
        )
    split = _split_codes(source)
    # 2. Topology over original IDs.
    csr = build_csr(source, options.symmetrize, options.drop_self_loops, scratch, progress)
    # 3. Features, labels, split into scratch memory maps.
    _spill_features(source, scratch / "x.npy", progress)
    np.save(scratch / "labels.npy", source.labels)
    np.save(scratch / "split.npy", split)
    # 4. Partition and relabel.
    # Partitioners need the undirected graph without self loops.
    clean = options.symmetrize and options.drop_self_loops
    undirected = csr if clean else build_csr(source, True, True, None, progress)
    partitioner = _partitioner(options, progress)
    parts = partitioner.partition(undirected, options.parts, split == SPLIT_CODES["train"])
    cut = edge_cut(undirected, parts)
    del undirected
    relabeling = relabel(parts, options.parts)
    write_columns(
        staging / "partition_book.arrow",
        {"start": relabeling.book[:, 0], "end": relabeling.book[:, 1]},
    )
    write_columns(
        staging / "node_map.arrow",
        {"global_of_original": relabeling.node_map, "original_of_global": relabeling.original},
    )
    np.save(scratch / "indptr.npy", csr.indptr)
    np.save(scratch / "original.npy", relabeling.original)
    np.save(scratch / "node_map.npy", relabeling.node_map)
    num_edges = csr.num_edges
    del csr, relabeling
    # 5. Topology and parts, written in parallel by Ray tasks.
    _write_in_parallel(options, staging, scratch, num_edges, parts)
    # 6. Metadata (checksums are added by write_meta).
    train = split == SPLIT_CODES["train"]
    return {
        "name": source.name,
        "source": options.source,
        "transform": options.resolved_transform,
        "num_nodes": source.num_nodes,
        "num_edges": num_edges,
        "num_features": source.num_features,
        "num_classes": source.num_classes,
        "num_parts": options.parts,
        "partitioner": options.partitioner,
        "feature_encoding": options.features,
        "index_dtype": index_dtype(source.num_nodes).name,
        "symmetrized": options.symmetrize,
        "self_loops_dropped": options.drop_self_loops,
        "edge_cut": round(cut, 6),
        "split_sizes": {s: int(np.count_nonzero(split == c)) for s, c in SPLIT_CODES.items()},
        "train_per_part": np.bincount(parts[train], minlength=options.parts).tolist(),
    }


def _partitioner(options: PrepareOptions, progress: bool) -> Partitioner:
    if options.partitioner == "stream":
        return get_partitioner("stream", progress=progress)
    return get_partitioner(options.partitioner, seed=options.seed)


def _split_codes(source: GraphSource) -> np.ndarray:
    """``[N]`` int8 split of every node, refusing a node listed in two splits."""
    codes = np.zeros(source.num_nodes, dtype=np.int8)
    for name, code in SPLIT_CODES.items():
        ids = source.splits[name]
        clash = np.flatnonzero(codes[ids] != 0)
        if len(clash):
            other = next(k for k, v in SPLIT_CODES.items() if v == codes[ids[clash[0]]])
            raise DatasetError(
                f"{source.name}: node {ids[clash[0]]} is in both the {other} and "
                f"the {name} split (entry {clash[0] + 1} of {name}); splits must "
                "not overlap."
            )
        codes[ids] = code
    return codes


def _spill_features(source: GraphSource, path: Path, progress: bool) -> None:
    """Write every feature row (checked finite) into a ``[N, F]`` float32 ``.npy`` map."""
    x = np.lib.format.open_memmap(
        path, mode="w+", dtype=np.float32, shape=(source.num_nodes, source.num_features)
    )
    for start in tqdm(
        range(0, source.num_nodes, FEATURE_CHUNK),
        desc="features",
        unit="chunk",
        disable=not progress,
    ):
        stop = min(start + FEATURE_CHUNK, source.num_nodes)
        rows = source.feature_rows(start, stop)
        check_feature_rows(source, rows, start)
        x[start:stop] = rows
    x.flush()
    del x


# --- Ray tasks (they receive paths and integers only) --------------------------------------


def write_topology(staging: str, scratch: str, num_edges: int) -> None:
    """Relabel the CSR to global IDs and write ``topology/{indptr,indices}.arrow``."""
    from lorap_dist.graph.partition import relabel_csr

    scratch_dir = Path(scratch)
    original = np.load(scratch_dir / "original.npy")
    csr = CSRArrays(
        indptr=np.load(scratch_dir / "indptr.npy"),
        indices=np.load(scratch_dir / "csr_indices.npy", mmap_mode="r")[:num_edges],
    )
    relabeling = Relabeling(np.load(scratch_dir / "node_map.npy"), original, np.zeros((0, 2)))
    out = np.lib.format.open_memmap(
        scratch_dir / "topology_indices.npy",
        mode="w+",
        dtype=csr.indices.dtype,
        shape=(max(num_edges, 1),),
    )
    indptr = relabel_csr(csr, relabeling, out)
    write_array(Path(staging) / "topology/indptr.arrow", indptr)
    write_array(Path(staging) / "topology/indices.arrow", out[:num_edges])


def write_part(staging: str, scratch: str, rank: int, start: int, end: int, encoding: str) -> int:
    """Write part ``rank`` (global IDs ``start .. end-1``): features, labels, split."""
    import torch

    from lorap_dist.quant.integer import quantize_rows

    scratch_dir = Path(scratch)
    original = np.load(scratch_dir / "original.npy", mmap_mode="r")[start:end]
    x = np.load(scratch_dir / "x.npy", mmap_mode="r")
    directory = Path(staging) / part_dir(rank)
    rows, width = end - start, x.shape[1]
    dtype = np.int8 if encoding == "int8" else np.float32
    features = np.lib.format.open_memmap(
        scratch_dir / f"part-{rank}-x.npy", mode="w+", dtype=dtype, shape=(max(rows, 1), width)
    )[:rows]
    scales = np.zeros(rows, dtype=np.float32)
    # One block of rows at a time, so memory stays bounded. Relabelling is stable, so a
    # part's original IDs ascend and the gather reads the map front to back.
    for a in range(0, rows, GATHER_ROWS):
        block = x[original[a : a + GATHER_ROWS]]
        if encoding == "int8":
            codes, block_scales = quantize_rows(torch.from_numpy(np.ascontiguousarray(block)))
            features[a : a + len(block)] = codes.numpy()
            scales[a : a + len(block)] = block_scales.numpy()
        else:
            features[a : a + len(block)] = block
    write_array(directory / "features.arrow", features)
    if encoding == "int8":
        write_array(directory / "scales.arrow", scales)
    write_array(directory / "labels.arrow", np.load(scratch_dir / "labels.npy")[original])
    write_array(directory / "split.arrow", np.load(scratch_dir / "split.npy")[original])
    return rank


def _uses_ray(options: PrepareOptions, num_nodes: int) -> bool:
    if options.use_ray is not None:
        return options.use_ray
    return options.parts > 1 and num_nodes >= RAY_MIN_NODES


def _write_in_parallel(
    options: PrepareOptions, staging: Path, scratch: Path, num_edges: int, parts: np.ndarray
) -> None:
    ends = np.cumsum(np.bincount(parts, minlength=options.parts))
    starts = ends - np.bincount(parts, minlength=options.parts)
    if not _uses_ray(options, len(parts)):
        write_topology(str(staging), str(scratch), num_edges)
        for r in tqdm(range(options.parts), desc="write parts", disable=not options.progress):
            write_part(
                str(staging), str(scratch), r, int(starts[r]), int(ends[r]), options.features
            )
        return
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    with ray_session(
        options.workers,
        address=options.address,
        object_store_memory=256 * 1024**2,
        who="prepare:",
    ):
        # The scratch files live on this node's disk: run every task here.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        topology = ray.remote(write_topology).options(scheduling_strategy=here)
        part = ray.remote(write_part).options(scheduling_strategy=here)
        pending = [topology.remote(str(staging), str(scratch), num_edges)] + [
            part.remote(
                str(staging), str(scratch), r, int(starts[r]), int(ends[r]), options.features
            )
            for r in range(options.parts)
        ]
        with tqdm(
            total=len(pending), desc="write parts", unit="file set", disable=not options.progress
        ) as bar:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                ray.get(done)
                bar.update(len(done))
