"""Helpers shared by the cache tests (a uniquely named module, not conftest)."""

import os
import shutil
import subprocess

from prometheus_client import REGISTRY


class FakeClock:
    """Wall clock stand-in: TTL tests move time instead of sleeping."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class TickingClock(FakeClock):
    """Every reading is later than the one before, so LRU order is exact."""

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def metric(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


def remount_read_only(path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)


def on_digits(tmp_path, scenario, configure=None, **model_yaml):
    """``scenario(cfg, repo)`` (a function or a coroutine function) with the
    real digits model (model.yaml edited as ``copy_digits`` does) loaded in a
    real repository on a real event loop; ``configure(cfg)`` edits the config first."""
    import asyncio

    from daemon_proc import copy_digits
    from edge_agent.config import load_config
    from edge_agent.serving.repository import ModelRepository

    copy_digits(tmp_path / "models", **model_yaml)
    cfg = load_config(None)
    cfg.paths.models_dir = tmp_path / "models"
    if configure is not None:
        configure(cfg)

    async def main():
        repo = ModelRepository(cfg, asyncio.get_running_loop())
        await repo.sync()
        try:
            result = scenario(cfg, repo)
            return await result if asyncio.iscoroutine(result) else result
        finally:
            await repo.close(5)

    return asyncio.run(main())
