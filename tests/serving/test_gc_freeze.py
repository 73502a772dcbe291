"""The daemon freezes start-up objects (gc.freeze); unloading a version loaded before that
must still free its reference cycles (batcher <-> worker threads)."""

from __future__ import annotations

import asyncio
import gc
import weakref

from daemon_proc import copy_digits, paths_config



def test_an_unloaded_version_frozen_at_start_up_is_collected(tmp_path):
    from edge_agent.serving.repository import ModelRepository

    models = tmp_path / "models"
    copy_digits(models)
    cfg = paths_config(tmp_path)

    async def scenario():
        repo = ModelRepository(cfg, asyncio.get_running_loop())
        await repo.sync()
        batcher = weakref.ref(repo.models["digits"].versions["1"].batcher)
        gc.collect()
        gc.freeze()  # as daemon.startup does once ready
        try:
            await repo.unload("digits", "1", drain_timeout=1)
            gc.collect()
            return batcher() is None, gc.get_freeze_count() > 0
        finally:
            gc.unfreeze()

    collected, refrozen = asyncio.run(scenario())
    assert collected, "the unloaded batcher's cycle outlived the unload"
    assert refrozen
