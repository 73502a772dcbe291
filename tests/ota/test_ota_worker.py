"""The per-model worker (ota/worker.py): one thread, jobs in order, never two at once."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from edge_agent.ota.worker import SerialWorker


def test_jobs_run_one_at_a_time_in_order_on_one_daemon_thread():
    w = SerialWorker("ota-test")
    running, seen, overlaps = [], [], []

    def job(i):
        running.append(i)
        if len(running) > 1:
            overlaps.append(list(running))
        time.sleep(0.005)
        seen.append((i, threading.current_thread().name, threading.current_thread().daemon))
        running.remove(i)
        return i * 2

    futs = [w.submit(job, i) for i in range(20)]
    assert [f.result(10) for f in futs] == [i * 2 for i in range(20)]
    assert [s[0] for s in seen] == list(range(20)) and overlaps == []
    assert {s[1:] for s in seen} == {("ota-test", True)}
    w.close()


def test_an_exception_goes_to_the_awaiting_coroutine_and_the_worker_goes_on():
    w = SerialWorker("ota-test")

    def boom():
        raise ValueError("bad step")

    async def scenario():
        with pytest.raises(ValueError, match="bad step"):
            await asyncio.wrap_future(w.submit(boom))
        return await asyncio.wrap_future(w.submit(lambda: "next"))

    assert asyncio.run(scenario()) == "next"
    w.close()


def test_close_does_not_wait_for_the_running_job_and_later_jobs_do_not_run():
    w = SerialWorker("ota-test")
    release = threading.Event()
    first = w.submit(release.wait, 10)
    later = w.submit(lambda: "ran")
    assert later.cancel()  # its awaiter went away before it started
    w.close()  # returns at once: the job is still blocked
    assert not first.done()
    release.set()
    assert first.result(10) is True
    assert later.cancelled()
