"""What an update needs the daemon to do: the updater's intents, and who carries them out.

The updater (``updater.py``) does its blocking work in a worker thread and
never touches the model repository. When a step needs the serving side to act,
it queues an intent and goes on; its caller takes the intents
(``Updater.take_intents()``) and carries them out, in order:

- ``StartCanary``: load the validated version and route a share of traffic to
  it; then tell the updater how that went (``Updater.canary_started``). The
  verdict comes later, from live traffic (``Updater.decide``).
- ``Promote``: the pointers already name the version: route everything to it.
- ``RollBack``: the pointers already name the fallback: route everything back
  to it. Unloading the refused version follows from the routing rule
  (``routing.py``), which no longer admits it.

In the daemon the OTA agent carries them out on the event loop (``agent.py``).
Without a daemon, ``carry_out`` does it synchronously through ``DaemonHooks``
(the updater's standalone mode, and its tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Literal, Optional, Protocol, Tuple, Union

Verdict = Optional[Literal["promote", "rollback"]]


@dataclass(frozen=True)
class StartCanary:
    version: str
    version_dir: Path


@dataclass(frozen=True)
class Promote:
    version: str


@dataclass(frozen=True)
class RollBack:
    version: str


Intent = Union[StartCanary, Promote, RollBack]


class DaemonHooks(Protocol):
    """The serving side of a standalone updater, called synchronously by ``carry_out``."""

    def start_canary(self, model: str, version: str, version_dir: Path) -> None:
        """Load ``version_dir`` and route the configured share of traffic to it. Raise to refuse."""

    def canary_verdict(self, model: str, version: str) -> Union[Verdict, Tuple[Verdict, str]]:
        """None while the window is open; then 'promote' or 'rollback', optionally with a reason."""

    def promote(self, model: str, version: str) -> None:
        """Serve ``version`` for all traffic (pointers are already written)."""

    def rollback(self, model: str, version: str) -> None:
        """Stop routing to ``version`` and unload it (pointers are already written)."""


class StandaloneHooks:
    """No daemon: no canary, validation is the whole gate."""

    def start_canary(self, model, version, version_dir): pass
    def canary_verdict(self, model, version): return "promote"
    def promote(self, model, version): pass
    def rollback(self, model, version): pass


def carry_out(upd, hooks: DaemonHooks) -> None:
    """Carry out every intent ``upd`` has queued, through ``hooks``, until none is left
    (a canary that cannot start queues a roll-back)."""
    while True:
        intents: List[Intent] = upd.take_intents()
        if not intents:
            return
        for intent in intents:
            if isinstance(intent, StartCanary):
                try:
                    hooks.start_canary(upd.model, intent.version, intent.version_dir)
                except Exception as e:  # noqa: BLE001 - the serving side refused: the updater rolls back
                    upd.canary_started(e)
                else:
                    upd.canary_started(None)
            elif isinstance(intent, Promote):
                hooks.promote(upd.model, intent.version)
            else:
                hooks.rollback(upd.model, intent.version)
