"""One model's worker: a single daemon thread that runs that model's updater calls in order.

Every call into a model's ``Updater`` (poll, download, verify, validate,
promote, roll back, operator actions) is a job on this worker, so two of them
never overlap: serial by construction, no lock. The event loop submits a job
and awaits its result (``asyncio.wrap_future``); the job never calls back into
the loop, it returns what the daemon must do (``ota/intents.py``).

Why not ``ThreadPoolExecutor(max_workers=1)``: the interpreter joins executor
threads at exit, so a daemon stopping during a download would wait for it.
Here the thread is a daemon thread; exiting under it is a power cut the state
machine already survives (the ``.part`` file resumes on the next start).
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable


class SerialWorker:
    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        """Queue ``fn(*args, **kwargs)`` behind the jobs already queued."""
        fut: Future = Future()
        self._jobs.put((fut, fn, args, kwargs))
        return fut

    def close(self) -> None:
        """No job after those queued; does not wait for the one running."""
        self._jobs.put(None)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fut, fn, args, kwargs = job
            if not fut.set_running_or_notify_cancel():
                continue  # its awaiter went away (shutdown) before it started
            try:
                fut.set_result(fn(*args, **kwargs))
            except BaseException as e:  # noqa: BLE001 - handed to the awaiting coroutine
                fut.set_exception(e)
