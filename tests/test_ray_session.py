"""How the entry points reach Ray (:mod:`lorap_dist.ray_session`), with ``ray.init`` replaced."""

from __future__ import annotations

import os

from lorap_dist.ray_session import RAY_ENV, offline_defaults, ray_session


def test_ray_is_private_unless_a_cluster_is_named(monkeypatch, capsys):
    import ray

    calls, shutdowns = [], []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(ray, "shutdown", lambda: shutdowns.append(1))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with ray_session(2, who="prepare:"):
        pass
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    with ray_session(2):
        pass
    with ray_session(2, address="ray://head:10001"):
        pass
    with ray_session(3, join=False):  # the main job's own instance, whatever RAY_ADDRESS says
        pass
    assert [c["address"] for c in calls] == ["local", "10.0.0.1:6379", "ray://head:10001", "local"]
    assert calls[0]["num_cpus"] == 2 and calls[3]["num_cpus"] == 3
    assert len(shutdowns) == 4  # each session it opened, it closed
    assert "prepare: starting a private local Ray instance (2 CPUs)" in capsys.readouterr().out

    monkeypatch.setattr(ray, "is_initialized", lambda: True)  # already connected: kept as is
    with ray_session(2):
        pass
    assert len(calls) == 4 and len(shutdowns) == 4


def test_offline_defaults_leave_the_users_settings(monkeypatch):
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "1")
    monkeypatch.delenv("RAY_ENABLE_UV_RUN_RUNTIME_ENV", raising=False)
    offline_defaults()
    assert os.environ["RAY_USAGE_STATS_ENABLED"] == "1"
    assert os.environ["RAY_ENABLE_UV_RUN_RUNTIME_ENV"] == RAY_ENV["RAY_ENABLE_UV_RUN_RUNTIME_ENV"]
