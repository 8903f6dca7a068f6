"""Feature rows by indexing, by ``index_select``, or by ``index_select`` into a buffer kept
across batches: which gathers a sampled batch faster?

Every training step gathers the feature rows of its sampled nodes: ``Partition.
features_fp32``, the feature exchange's payload and its received rows, and the single-process
trainer's ``x[ids]``. They now call ``x.index_select(0, ids)``, which on the CPU is faster
than advanced indexing ``x[ids]`` for the same rows. This script measures both on the rows of
one sampled batch of the sampler benchmark's size (447,000 sorted random IDs out of 2.4 M
nodes, 100 features): float32 and int8 codes, in memory and memory-mapped from a ``.npy``
file as a prepared dataset is; both in turn in one process, medians of the repeats, results
checked equal first. The third way is :class:`~lorap_dist.graph.gather.RowGather`, which the
trainers and workers now use: ``index_select`` into one buffer that every batch overwrites,
instead of a new ~100 MB tensor that the allocator takes from ``mmap`` and page-faults in on
every batch.

Writes ``benchmarks/results/gather.json`` (rows: storage, dtype, indexing_ms,
index_select_ms, speedup, reused_buffer_ms, reused_vs_index_select, equal) and
``benchmarks/results/gather.md``.

    .venv/bin/python benchmarks/gather.py [--repeats 9] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import machine, parse_timing, timing_parser, write_report, write_result  # noqa: E402

from lorap_dist.graph.gather import RowGather  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = timing_parser(__doc__, repeats=9)
    p.add_argument("--nodes", type=int, default=2_400_000)
    p.add_argument("--features", type=int, default=100)
    p.add_argument("--rows", type=int, default=447_000)
    return parse_timing(p)


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main() -> None:
    args = parse_args()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, args.nodes, (args.rows,), generator=gen).sort().values
    tables = {
        "float32": torch.randn(args.nodes, args.features, generator=gen),
        "int8": torch.randint(-127, 128, (args.nodes, args.features), generator=gen).to(torch.int8),
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dtype, table in tables.items():
            path = Path(tmp) / f"{dtype}.npy"
            np.save(path, table.numpy())
            mapped = torch.from_numpy(np.load(path, mmap_mode="r+"))
            for storage, x in (("in memory", table), ("memory-mapped", mapped)):
                rows_of = RowGather()
                equal = torch.equal(x[ids], x.index_select(0, ids)) and torch.equal(
                    x[ids], rows_of(x, ids)
                )
                indexing = median_ms(lambda x=x: x[ids], args.repeats)
                selecting = median_ms(lambda x=x: x.index_select(0, ids), args.repeats)
                reused = median_ms(lambda x=x, g=rows_of: g(x, ids), args.repeats)
                rows.append(
                    {
                        "storage": storage,
                        "dtype": dtype,
                        "indexing_ms": round(indexing, 1),
                        "index_select_ms": round(selecting, 1),
                        "speedup": round(indexing / selecting, 2),
                        "reused_buffer_ms": round(reused, 1),
                        "reused_vs_index_select": round(selecting / reused, 2),
                        "equal": equal,
                    }
                )
            del mapped
    write_result(
        "gather",
        {
            "command": "python benchmarks/gather.py " + " ".join(sys.argv[1:]),
            "machine": machine(),
            "nodes": args.nodes,
            "features": args.features,
            "rows": args.rows,
            "repeats": args.repeats,
            "results": rows,
        },
    )
    keys = [
        "storage", "dtype", "indexing_ms", "index_select_ms", "speedup", "reused_buffer_ms",
        "reused_vs_index_select", "equal",
    ]  # fmt: skip
    write_report(
        "gather",
        f"{args.rows:,} sorted random rows of {args.nodes:,} x {args.features}, median of "
        f"{args.repeats} repeats, {args.threads} thread(s).",
        [
            "storage",
            "dtype",
            "x[ids] (ms)",
            "x.index_select(0, ids) (ms)",
            "speedup",
            "RowGather, reused buffer (ms)",
            "vs index_select",
            "equal",
        ],
        [[r[k] for k in keys] for r in rows],
    )


if __name__ == "__main__":
    main()
