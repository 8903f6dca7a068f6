"""How fast can the sampler benchmark's training step be on this CPU? Its arithmetic floor.

``benchmarks/sampler.py`` times one FP32 step of a 3-layer GraphSAGE (hidden 256, mean
aggregation, blocks from fanouts [15, 10, 5] and 1,024 seeds): ours 0.741 s, DGL's 0.682 s,
against a target of ours at least 1.5x faster than DGL's (0.455 s). Both sides do the same
arithmetic: each layer's mean aggregation and its two dense linears (neighbours and root),
forward and backward. This script measures what that arithmetic alone costs on one core,
beside our whole step, on random blocks of the sizes the sampler drew (``sampler.json``'s
``step_blocks_src_dst_edges``), in one process, taking turns, medians of the repeats:

- ``ours``: the step as ``sampler.py`` times it (the project's ``QSAGEConv`` with
  quantization off, ReLU between layers, cross-entropy, backward, Adam);
- ``ours, slice root``: the same step with the root rows' gradient through autograd's slice
  (a zero ``[num_src, d]`` gradient filled and added to the aggregation's), as before
  :class:`~lorap_dist.nn.aggregate.CSRAggregation` summed the two in one backward;
- ``gemm``: only the step's dense matmuls, on ready tensors: every layer's two linears
  forward, their weight gradients, and the input gradients of every layer but the first (the
  features take none);
- ``spmm``: only the aggregations, CSR matmuls: forward, and the transpose backward of every
  layer but the first.

``gemm + spmm`` is a floor for any step that does this arithmetic with PyTorch's kernels on
this core; the rest of ``ours`` (elementwise ops, the loss, Adam, building the CSR matrices)
is what an implementation can still win.

Writes ``benchmarks/results/step_floor.json`` (``ours_step_s``, ``slice_root_step_s``,
``gemm_s``, ``spmm_s``, ``floor_s``, ``floor_share``; ``dgl_step_s``, ``target_step_s``
and ``target_share_of_our_step`` from ``sampler.json``'s run; ``target_below_floor``) and
``benchmarks/results/step_floor.md``.

    .venv/bin/python benchmarks/step_floor.py [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import RESULTS, machine, parse_timing, timing_parser, write_report, write_result  # noqa: E402

from lorap_dist.graph.block import Block  # noqa: E402
from lorap_dist.nn.aggregate import CSRAggregation  # noqa: E402
from lorap_dist.nn.sage import QSAGEConv  # noqa: E402

#: (src, dst, edges) per block, input layer first, as the sampler drew them (sampler.json).
DEFAULT_BLOCKS = [(234825, 79500, 457496), (79500, 11639, 118327), (11639, 1024, 12960)]


def parse_args() -> argparse.Namespace:
    p = timing_parser(__doc__, repeats=7)
    p.add_argument("--features", type=int, default=100)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    return parse_timing(p)


class SliceRoot(CSRAggregation):
    """The aggregation as it was: no joint backward for the root rows, which the layer
    then slices from its input (autograd fills and adds their gradient)."""

    def with_root(self, *args):
        return None


def random_block(num_src: int, num_dst: int, num_edges: int, gen: torch.Generator) -> Block:
    """A block of ``num_edges`` edges spread evenly over the destinations, random sources."""
    dst = torch.arange(num_edges) * num_dst // num_edges
    src = torch.randint(0, num_src, (num_edges,), generator=gen)
    return Block(torch.stack([src, dst]), num_src, num_dst)


def csr(block: Block, transpose: bool) -> torch.Tensor:
    src, dst = block.edge_index
    rows, cols = (src, dst) if transpose else (dst, src)
    shape = (block.num_src, block.num_dst) if transpose else (block.num_dst, block.num_src)
    ones = torch.ones(rows.numel())
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), ones, shape).to_sparse_csr()


def time_it(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    args = parse_args()
    warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
    gen = torch.Generator().manual_seed(args.seed)
    sampler_json = RESULTS / "sampler.json"
    recorded = json.loads(sampler_json.read_text()) if sampler_json.exists() else {}
    sizes = recorded.get("ours", {}).get("step_blocks_src_dst_edges") or DEFAULT_BLOCKS
    blocks = [random_block(*s, gen) for s in sizes]
    dims = [args.features] + [args.hidden] * (len(blocks) - 1) + [args.classes]
    layers = list(zip(dims[:-1], dims[1:], strict=True))

    feats = torch.randn(blocks[0].num_src, args.features, generator=gen)
    labels = torch.randint(0, args.classes, (blocks[-1].num_dst,), generator=gen)

    def make_step(slice_root: bool):
        torch.manual_seed(args.seed)
        convs = torch.nn.ModuleList(QSAGEConv(a, b) for a, b in layers)
        for conv in convs if slice_root else ():
            conv.csr_aggregation = SliceRoot()
        opt = torch.optim.Adam(convs.parameters(), lr=1e-3)

        def step() -> None:
            h = feats
            for i, (conv, block) in enumerate(zip(convs, blocks, strict=True)):
                h = conv(h, block)
                h = h.relu() if i + 1 < len(convs) else h
            loss = torch.nn.functional.cross_entropy(h, labels)
            opt.zero_grad()
            loss.backward()
            opt.step()

        return step

    # Ready tensors of the step's shapes: per layer the aggregate and the root rows
    # [dst, in], both weights [out, in], the output gradient [dst, out], the sources [src, in].
    ready = []
    for block, (a, b) in zip(blocks, layers, strict=True):
        ready.append(
            {
                "h": torch.randn(block.num_dst, a, generator=gen),
                "root": torch.randn(block.num_dst, a, generator=gen),
                "w": torch.randn(b, a, generator=gen),
                "grad": torch.randn(block.num_dst, b, generator=gen),
                "x": torch.randn(block.num_src, a, generator=gen),
                "adj": csr(block, transpose=False),
                "adj_t": csr(block, transpose=True),
            }
        )

    def gemm() -> None:
        for i, t in enumerate(ready):
            for rows in (t["h"], t["root"]):
                torch.mm(rows, t["w"].t())  # forward
                torch.mm(t["grad"].t(), rows)  # weight gradient
                if i:
                    torch.mm(t["grad"], t["w"])  # input gradient

    def spmm() -> None:
        for i, t in enumerate(ready):
            t["adj"] @ t["x"]
            if i:
                t["adj_t"] @ t["h"]

    runs = {"ours": make_step(False), "slice_root": make_step(True), "gemm": gemm, "spmm": spmm}
    for fn in runs.values():  # warm-up (the layers build and remember their CSR matrices)
        fn()
    secs: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            secs[name].append(time_it(fn))
    med = {name: statistics.median(v) for name, v in secs.items()}
    floor = med["gemm"] + med["spmm"]
    dgl_step = recorded.get("dgl_step_s")
    target = None if dgl_step is None else dgl_step / 1.5
    # The target as a share of our step, both from the sampler's run (one machine state):
    # loads that slow every kernel alike cancel in it.
    recorded_ours = recorded.get("ours_step_s")
    target_share = None if target is None or not recorded_ours else target / recorded_ours
    flops = sum(
        2 * 2 * t["h"].size(0) * t["h"].size(1) * t["w"].size(0) * (3 if i else 2)
        for i, t in enumerate(ready)
    )
    result = {
        "command": "python benchmarks/step_floor.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "blocks_src_dst_edges": sizes,
        "layers_in_out": layers,
        "repeats": args.repeats,
        "ours_step_s": med["ours"],
        "slice_root_step_s": med["slice_root"],
        "gemm_s": med["gemm"],
        "spmm_s": med["spmm"],
        "floor_s": floor,
        "floor_share": floor / med["ours"],
        "gemm_gflops": flops / 1e9,
        "gemm_gflop_per_s": flops / 1e9 / med["gemm"],
        "dgl_step_s": dgl_step,
        "target_step_s": target,
        "target_share_of_our_step": target_share,
        "target_below_floor": None if target_share is None else target_share < floor / med["ours"],
        "rounds": secs,
    }
    write_result("step_floor", result)
    rows = [
        ["our whole step", f"{med['ours']:.3f}", "1.00"],
        [
            "our step, root gradient through autograd's slice (before)",
            f"{med['slice_root']:.3f}",
            f"{med['slice_root'] / med['ours']:.2f}",
        ],
        ["dense matmuls alone (gemm)", f"{med['gemm']:.3f}", f"{med['gemm'] / med['ours']:.2f}"],
        ["aggregations alone (spmm)", f"{med['spmm']:.3f}", f"{med['spmm'] / med['ours']:.2f}"],
        ["floor: gemm + spmm", f"{floor:.3f}", f"{floor / med['ours']:.2f}"],
    ]
    after = ""
    if target_share is not None:
        share = floor / med["ours"]
        verdict = "below" if target_share < share else "above"
        after = (
            f"\nIn `sampler.json`'s run DGL's step took {dgl_step:.3f} s and ours "
            f"{recorded_ours:.3f} s, so 1.5x faster than DGL is {target:.3f} s, "
            f"{target_share:.2f} of our step: {verdict} the share the step's matmuls alone take "
            f"in this run ({share:.2f}).\n"
        )
    write_report(
        "step_floor",
        f"Blocks (src, dst, edges), input layer first: {sizes}; layers (in, out): {layers}; "
        f"{args.threads} thread(s), {args.repeats} repeats taking turns. The dense matmuls do "
        f"{flops / 1e9:.1f} GFLOP ({flops / 1e9 / med['gemm']:.0f} GFLOP/s).",
        ["", "seconds (median)", "share of our step"],
        rows,
        after,
    )


if __name__ == "__main__":
    main()
