"""Joining or starting Ray, in one place: what ``lorap prepare``, the main job and the
benchmarks use, with the offline-friendly defaults every entry point sets.

A leaf module (Ray is imported when a session opens), so the pipeline in ``graph/`` can run
its tasks on Ray without deciding itself how Ray is reached.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

#: Offline-friendly Ray settings (no usage reports, no ``uv run`` runtime environments); a
#: user's own setting wins.
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}


def offline_defaults() -> None:
    """Put :data:`RAY_ENV` into the environment where the user has not set its variables;
    call it before Ray starts (workers inherit it)."""
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)


@contextlib.contextmanager
def ray_session(
    num_cpus: int,
    *,
    address: str | None = None,
    join: bool = True,
    object_store_memory: int | None = None,
    who: str = "lorap:",
) -> Iterator[None]:
    """Ray for the duration of the block.

    A process already connected keeps its connection. Otherwise, with ``join``, the block
    joins the cluster the user names (``address``, else ``RAY_ADDRESS``); without one (or
    without ``join``) it starts a private local instance with ``num_cpus`` CPUs, never
    another user's cluster found through Ray's default session file. It says which on
    stdout after ``who`` (the caller's log prefix), and disconnects at the end if it connected.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    offline_defaults()
    address = (address or os.environ.get("RAY_ADDRESS")) if join else None
    if address:
        print(f"{who} joining the Ray cluster at {address}", flush=True)
        ray.init(address=address, log_to_driver=False)
    else:
        print(f"{who} starting a private local Ray instance ({num_cpus} CPUs)", flush=True)
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            object_store_memory=object_store_memory,
            log_to_driver=False,
        )
    try:
        yield
    finally:
        ray.shutdown()
