"""Test-only failpoint for the OTA daemon tests: hold an update in a state so a test can kill -9
the daemon in exactly that state. Nothing of it is in edge_agent.

A test puts this directory first on the daemon's PYTHONPATH and sets
``EDGE_AGENT_OTA_HOLD=staged,verifying,...`` (``hold_env()`` in
test_ota_daemon_e2e.py); Python imports ``sitecustomize`` by itself at start-up,
and this one swaps the OTA agent's ``Updater`` for ``HeldUpdater``, which sleeps
on the model's worker thread right after such a state is persisted and before
its work. Without the variable it does nothing.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path

HOLD_ENV, HOLD_S = "EDGE_AGENT_OTA_HOLD", 120.0


def _install(holds: set) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the checkout under test (the daemon's cwd)
    from edge_agent.ota import agent
    from edge_agent.ota.updater import Updater

    log = logging.getLogger("edge_agent.ota")

    class HeldUpdater(Updater):
        def __init__(self, model, *, on_progress=None, **kw):
            self._held_last = None

            def progress(rec):
                if on_progress is not None:
                    on_progress(rec)
                changed = rec.state is not self._held_last
                self._held_last = rec.state
                # Never the event loop: only the worker thread may sleep.
                if changed and rec.state.value in holds and threading.current_thread() is not threading.main_thread():
                    log.warning("ota: %s: holding in %s (%s is set)", model, rec.state.value, HOLD_ENV)
                    time.sleep(HOLD_S)

            super().__init__(model, on_progress=progress, **kw)
            self._held_last = self.state

    agent.Updater = HeldUpdater


_holds = {s.strip() for s in os.environ.get(HOLD_ENV, "").split(",") if s.strip()}
if _holds:
    _install(_holds)
