import asyncio

import pytest

from edge_agent.cache.singleflight import SingleFlight


def test_fifty_identical_concurrent_calls_run_the_factory_once():
    async def main():
        sf = SingleFlight()
        runs = 0
        gate = asyncio.Event()

        async def infer():
            nonlocal runs
            runs += 1
            await gate.wait()
            return {"y": runs}

        calls = [asyncio.create_task(sf.run(b"k", infer)) for _ in range(50)]
        await asyncio.sleep(0)
        assert len(sf) == 1
        gate.set()
        results = await asyncio.gather(*calls)
        return runs, results, len(sf)

    runs, results, left = asyncio.run(main())
    assert runs == 1
    assert results == [{"y": 1}] * 50
    assert left == 0


def test_different_keys_run_separately_and_a_later_call_runs_again():
    async def main():
        sf = SingleFlight()
        seen = []

        async def work(k):
            seen.append(k)
            await asyncio.sleep(0)
            return k

        r = await asyncio.gather(sf.run("a", lambda: work("a")), sf.run("b", lambda: work("b")))
        r.append(await sf.run("a", lambda: work("a")))
        return seen, r

    seen, r = asyncio.run(main())
    assert sorted(seen) == ["a", "a", "b"]
    assert r == ["a", "b", "a"]


def test_an_exception_reaches_every_waiter_and_the_entry_is_removed():
    class Boom(Exception):
        pass

    async def main():
        sf = SingleFlight()

        async def fail():
            await asyncio.sleep(0)
            raise Boom("ort failed")

        results = await asyncio.gather(*(sf.run("k", fail) for _ in range(5)), return_exceptions=True)
        return results, len(sf)

    results, left = asyncio.run(main())
    assert len(results) == 5 and all(isinstance(r, Boom) for r in results)
    assert left == 0


def test_a_cancelled_waiter_does_not_cancel_the_shared_work():
    async def main():
        sf = SingleFlight()
        gate = asyncio.Event()

        async def infer():
            await gate.wait()
            return 42

        first = asyncio.create_task(sf.run("k", infer))
        second = asyncio.create_task(sf.run("k", infer))
        await asyncio.sleep(0)
        first.cancel()
        await asyncio.sleep(0)
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await first
        return await second

    assert asyncio.run(main()) == 42
