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


def test_a_cancelled_follower_leaves_the_work_and_the_others_alone():
    async def main():
        sf = SingleFlight()
        loop = asyncio.get_running_loop()
        made = []

        def submit():  # like Batcher.submit: returns the future the batcher resolves
            made.append(loop.create_future())
            return made[-1]

        leader = asyncio.create_task(sf.run("k", submit))
        await asyncio.sleep(0)
        followers = [asyncio.create_task(sf.run("k", submit)) for _ in range(3)]
        await asyncio.sleep(0)
        followers[0].cancel()
        await asyncio.sleep(0)
        assert len(made) == 1 and not made[0].cancelled()
        made[0].set_result({"y": 1})
        results = await asyncio.gather(leader, *followers[1:])
        with pytest.raises(asyncio.CancelledError):
            await followers[0]
        return results, len(sf)

    results, left = asyncio.run(main())
    assert results == [{"y": 1}] * 3 and left == 0


def test_a_cancelled_leader_hands_the_work_to_its_followers():
    async def main():
        sf = SingleFlight()
        loop = asyncio.get_running_loop()
        made, stored = [], []

        def submit():
            made.append(loop.create_future())
            return made[-1]

        leader = asyncio.create_task(sf.run("k", submit, stored.append))
        await asyncio.sleep(0)
        followers = [asyncio.create_task(sf.run("k", submit, stored.append)) for _ in range(2)]
        await asyncio.sleep(0)
        leader.cancel()
        await asyncio.sleep(0)
        # The leader's future went with it; the work was started again at once.
        assert len(made) == 2 and made[0].cancelled() and len(sf) == 1
        made[1].set_result(7)
        results = await asyncio.gather(*followers)
        with pytest.raises(asyncio.CancelledError):
            await leader
        return results, stored, len(sf)

    results, stored, left = asyncio.run(main())
    assert results == [7, 7] and stored == [7] and left == 0


def test_a_cancelled_leader_without_followers_starts_nothing():
    async def main():
        sf = SingleFlight()
        loop = asyncio.get_running_loop()
        made = []

        def submit():
            made.append(loop.create_future())
            return made[-1]

        leader = asyncio.create_task(sf.run("k", submit))
        await asyncio.sleep(0)
        leader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leader
        return len(made), len(sf)

    assert asyncio.run(main()) == (1, 0)


def test_the_result_is_stored_once_before_any_caller_resumes():
    async def main():
        sf = SingleFlight()
        loop = asyncio.get_running_loop()
        stored = []
        seen = []

        def submit():
            fut = loop.create_future()
            loop.call_soon(fut.set_result, 7)
            return fut

        async def caller():
            r = await sf.run("k", submit, stored.append)
            seen.append(list(stored))
            return r

        return await asyncio.gather(*(caller() for _ in range(3))), stored, seen

    results, stored, seen = asyncio.run(main())
    assert results == [7, 7, 7] and stored == [7] and seen == [[7]] * 3


def test_a_failing_store_does_not_fail_the_callers():
    async def main():
        sf = SingleFlight()

        async def work():
            await asyncio.sleep(0)
            return 1

        def store(_):
            raise RuntimeError("disk on fire")

        return await asyncio.gather(*(sf.run("k", work, store) for _ in range(3)))

    assert asyncio.run(main()) == [1, 1, 1]


def test_a_factory_that_raises_at_once_fails_only_its_caller():
    class Overloaded(Exception):
        pass

    async def main():
        sf = SingleFlight()

        def submit():
            raise Overloaded("queue full")

        with pytest.raises(Overloaded):
            await sf.run("k", submit)
        return len(sf)

    assert asyncio.run(main()) == 0
