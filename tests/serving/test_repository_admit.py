"""The repository's admit hook: a rescan (SIGHUP) leaves held-back versions on disk unloaded, and
retire() unloads loaded versions it no longer admits."""

from __future__ import annotations

import asyncio

from daemon_proc import copy_digits, paths_config



def test_sync_skips_versions_the_hook_refuses(tmp_path):
    from edge_agent.serving.repository import ModelRepository

    models = tmp_path / "models"
    copy_digits(models)  # digits/1
    cfg = paths_config(tmp_path)

    async def scenario():
        repo = ModelRepository(cfg, asyncio.get_running_loop())
        try:
            assert (await repo.sync())["added"] == ["digits/1"]
            copy_digits(models, version="2")
            copy_digits(models, version="3")
            asked = []
            repo.admit = lambda name, version: asked.append((name, version)) or version != "2"
            res = await repo.sync()
            assert res["added"] == ["digits/3"] and ("digits", "2") in asked
            assert sorted(repo.models["digits"].versions) == ["1", "3"]
            repo.admit = None
            assert (await repo.sync())["added"] == ["digits/2"]
        finally:
            for name, entry in list(repo.models.items()):
                for v in list(entry.versions):
                    await repo.unload(name, v, drain_timeout=1)

    asyncio.run(scenario())


def test_on_model_removed_fires_when_the_last_version_goes(tmp_path):
    from edge_agent.serving.repository import ModelRepository

    models = tmp_path / "models"
    copy_digits(models)
    copy_digits(models, version="2")
    cfg = paths_config(tmp_path)
    removed: list[str] = []

    async def scenario():
        repo = ModelRepository(cfg, asyncio.get_running_loop())
        repo.on_model_removed.append(removed.append)
        await repo.sync()
        await repo.unload("digits", "1", drain_timeout=1)
        assert removed == []  # version 2 still serves
        await repo.unload("digits", "2", drain_timeout=1)

    asyncio.run(scenario())
    assert removed == ["digits"]


def test_the_repository_retires_what_the_rule_no_longer_admits_but_never_the_last_version(tmp_path):
    from edge_agent.ota.routing import RoutingRule
    from edge_agent.ota.statemachine import State, UpdateRecord
    from edge_agent.ota.versions import Pointers, write_pointers
    from edge_agent.serving.repository import ModelRepository

    models, state = tmp_path / "models", tmp_path / "state"
    for v in ("1", "2", "3"):
        copy_digits(models, version=v)
    write_pointers(state, "digits", Pointers(active="1"))
    cfg = paths_config(tmp_path)
    live = {"digits": UpdateRecord(model="digits", state=State.CANARY, target="3")}
    rule = RoutingRule(state, models)
    rule.follow(["digits"], live.__getitem__)

    async def scenario():
        repo = ModelRepository(cfg, asyncio.get_running_loop())
        repo.admit = rule
        try:
            await repo.sync()
            assert sorted(repo.models["digits"].versions) == ["1", "2", "3"]
            assert await repo.retire("digits") == []  # everything admitted
            live["digits"] = UpdateRecord(model="digits", state=State.ROLLED_BACK, target="3", rejected=["3"])
            assert await repo.retire("digits") == ["3"]
            write_pointers(state, "digits", Pointers(active="2"))
            live["digits"] = UpdateRecord(model="digits", state=State.IDLE, rejected=["1", "2", "3"])
            assert await repo.retire("digits") == ["1"]  # 2 is active
            write_pointers(state, "digits", Pointers())
            assert await repo.retire("digits") == []  # refused, but the last one keeps answering
            assert list(repo.models["digits"].versions) == ["2"]
        finally:
            for name, entry in list(repo.models.items()):
                for v in list(entry.versions):
                    await repo.unload(name, v, drain_timeout=1)

    asyncio.run(scenario())


def test_a_model_whose_last_version_is_draining_routes_to_model_not_ready(tmp_path):
    """While its last version drains (unload), the model is still listed with no version: a
    request naming no version got KeyError: None, a 500 (found under load by the unload test)."""
    from edge_agent.errors import ModelNotReady
    from edge_agent.serving.repository import ModelRepository

    models = tmp_path / "models"
    copy_digits(models)
    cfg = paths_config(tmp_path)

    async def scenario():
        repo = ModelRepository(cfg, asyncio.get_running_loop())
        await repo.sync()
        mv = repo.route("digits", None)
        release = asyncio.Event()
        drain = mv.batcher.drain

        async def slow_drain(timeout):  # hold the unload in its drain, as queued requests do
            await release.wait()
            return await drain(timeout)

        mv.batcher.drain = slow_drain
        unloading = asyncio.ensure_future(repo.unload("digits", "1", drain_timeout=1))
        await asyncio.sleep(0.05)
        try:
            repo.route("digits", None)
        except ModelNotReady as e:
            refused = e
        else:
            refused = None
        release.set()
        await unloading
        return refused

    err = asyncio.run(scenario())
    assert err is not None and "unloading" in err.message
