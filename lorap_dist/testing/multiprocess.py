"""Run a function on a real multi-process ``torch.distributed`` group (gloo, CPU) in tests.

Each rank is a fresh ``spawn`` process that joins a TCP rendezvous on a free port of
127.0.0.1, runs ``fn(rank, world_size, *args)``, and sends its return value (or its traceback)
back to the parent::

    def body(rank, world_size, n):
        return rank * n

    assert run_multiprocess(body, 3, 10) == [0, 10, 20]

``fn`` must be importable by name (a module-level function), as ``spawn`` requires.
"""

from __future__ import annotations

import os
import pickle
import queue
import socket
import traceback
from collections.abc import Callable, Collection
from datetime import timedelta
from typing import Any

import torch.distributed as dist
import torch.multiprocessing as mp


def free_ports(count: int, avoid: Collection[int] = ()) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that were free a moment ago, none in
    ``avoid``: every socket stays bound until all are chosen, so no port is handed out twice."""
    sockets: list[socket.socket] = []
    try:
        while len(sockets) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            if sock.getsockname()[1] in avoid:
                sock.close()
            else:
                sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    return free_ports(1)[0]


def _rank_main(
    rank: int,
    world_size: int,
    port: int,
    backend: str,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    results: Any,
) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        dist.init_process_group(
            backend,
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=60),
        )
        try:
            # Plain pickle bytes: tensors sent through the queue as they are would travel as
            # shared-memory handles that die with this process.
            results.put((rank, True, pickle.dumps(fn(rank, world_size, *args))))
        finally:
            dist.destroy_process_group()
    except BaseException:
        results.put((rank, False, traceback.format_exc()))


def run_multiprocess(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    backend: str = "gloo",
    timeout_s: float = 120.0,
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` processes; return the results by rank.

    Raises:
        RuntimeError: a rank raised (its traceback is in the message), died, or the group did
            not finish within ``timeout_s``.
    """
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_rank_main, args=(r, world_size, port, backend, fn, args, results))
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    collected: dict[int, Any] = {}
    failures: list[str] = []
    try:
        while len(collected) + len(failures) < world_size:
            try:
                rank, ok, value = results.get(timeout=timeout_s)
            except queue.Empty:
                dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0)]
                raise RuntimeError(
                    f"multi-process group of {world_size} did not finish in {timeout_s} s "
                    f"(ranks that died: {dead})."
                ) from None
            if ok:
                collected[rank] = pickle.loads(value)
            else:
                failures.append(f"rank {rank} failed:\n{value}")
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
    if failures:
        raise RuntimeError("\n".join(failures))
    return [collected[r] for r in range(world_size)]
