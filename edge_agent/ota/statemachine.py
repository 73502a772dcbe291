"""The update state machine of one model: one transition table, persisted before work.

``{state_dir}/ota/{model}.json`` is replaced atomically on every transition,
*before* the new state's work starts, so after kill -9 or a power cut the file
names the step that was in progress and ``Updater.resume()`` redoes or reverts
it (see docs/OTA.md for what each state does on restart).

Loop counters: ``attempts`` counts how often the current state's work was
started (retries and crash-resumes); past its limit the machine gives up.
``steps`` counts transitions since the update began and catches ping-pong
between states (e.g. verifying -> downloading -> verifying ...).
"""

from __future__ import annotations

import json
import logging
from enum import Enum
from pathlib import Path
from typing import Callable

from pydantic import BaseModel, Field, ValidationError

from ..atomic import atomic_write_json
from .errors import InvalidTransition
from .manifest import utc_now
from .metrics import STATE, TRANSITIONS as TRANSITION_COUNT

log = logging.getLogger(__name__)


class State(str, Enum):
    IDLE = "idle"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    STAGED = "staged"
    CANARY = "canary"
    ACTIVE = "active"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


class Event(str, Enum):
    START = "start"            # a target version was chosen (poll or command)
    DOWNLOADED = "downloaded"  # every artifact is in the staging dir, digests checked while streaming
    VERIFIED = "verified"      # signature + digests re-checked on disk, staging renamed into place
    VALIDATED = "validated"    # loads, IO signature matches, golden outputs reproduced
    PROMOTE = "promote"        # canary verdict or operator
    ROLLBACK = "rollback"      # canary verdict or operator
    RETRY = "retry"            # transient failure: do the work again
    REJECT = "reject"          # permanent failure: the version is refused
    RESUME = "resume"          # restart found this state's work interrupted
    GIVE_UP = "give_up"        # a loop counter ran out
    LOAD_FAILED = "load_failed"  # the promoted version does not load after a restart


S, E = State, Event
TRANSITIONS: dict[tuple[State, Event], State] = {
    (S.IDLE, E.START): S.DOWNLOADING,
    (S.ACTIVE, E.START): S.DOWNLOADING,       # next update after a finished one
    (S.ROLLED_BACK, E.START): S.DOWNLOADING,  # Updater refuses a rejected target unless forced
    (S.FAILED, E.START): S.DOWNLOADING,
    # A newer target may replace one not yet serving traffic; the canary must end first.
    (S.DOWNLOADING, E.START): S.DOWNLOADING,
    (S.VERIFYING, E.START): S.DOWNLOADING,
    (S.STAGED, E.START): S.DOWNLOADING,

    (S.DOWNLOADING, E.DOWNLOADED): S.VERIFYING,
    (S.DOWNLOADING, E.RETRY): S.DOWNLOADING,
    (S.DOWNLOADING, E.RESUME): S.DOWNLOADING,   # .part files make this a resume, not a restart
    (S.DOWNLOADING, E.REJECT): S.FAILED,        # bad signature, digest, size; agent too old
    (S.DOWNLOADING, E.GIVE_UP): S.FAILED,

    (S.VERIFYING, E.VERIFIED): S.STAGED,
    (S.VERIFYING, E.RETRY): S.DOWNLOADING,      # bytes on disk rotted since download: fetch again (steps bound it)
    (S.VERIFYING, E.RESUME): S.VERIFYING,       # verification is idempotent: run it again
    (S.VERIFYING, E.REJECT): S.FAILED,
    (S.VERIFYING, E.GIVE_UP): S.FAILED,

    (S.STAGED, E.VALIDATED): S.CANARY,
    (S.STAGED, E.RETRY): S.STAGED,
    (S.STAGED, E.RESUME): S.STAGED,             # a validation result is not trusted across a crash
    (S.STAGED, E.REJECT): S.FAILED,             # load error, IO signature, golden mismatch
    (S.STAGED, E.GIVE_UP): S.FAILED,            # e.g. the new graph crashes the process on load

    (S.CANARY, E.PROMOTE): S.ACTIVE,
    (S.CANARY, E.ROLLBACK): S.ROLLED_BACK,
    (S.CANARY, E.REJECT): S.ROLLED_BACK,        # the daemon could not start the canary
    (S.CANARY, E.RESUME): S.CANARY,             # counters were in memory: restart the window
    (S.CANARY, E.GIVE_UP): S.ROLLED_BACK,       # crashed in canary again: blame the new version

    (S.ACTIVE, E.ROLLBACK): S.ROLLED_BACK,      # operator, after promotion
    (S.ACTIVE, E.LOAD_FAILED): S.ROLLED_BACK,   # abandoned for the previous version
}
IN_FLIGHT = frozenset({S.DOWNLOADING, S.VERIFYING, S.STAGED, S.CANARY})
RESTING = frozenset({S.IDLE, S.ACTIVE, S.ROLLED_BACK, S.FAILED})
HISTORY_LEN = 50
REJECTED_LEN = 20


class HistoryEntry(BaseModel):
    state: State
    event: Event
    at: str
    reason: str | None = None


class UpdateRecord(BaseModel):
    """What is persisted; also the payload published on ``.../ota/state``."""

    model: str
    state: State = State.IDLE
    target: str | None = Field(None, description="Version being installed (or last installed).")
    fallback: str | None = Field(None, description="Version active when the update began; rollback restores it.")
    channel: str | None = None
    attempts: int = Field(0, description="Starts of the current state's work (retries + crash-resumes).")
    steps: int = Field(0, description="Transitions since START.")
    reason: str | None = None
    code: str | None = Field(None, description="Stable error code of the last failure.")
    updated_at: str = Field(default_factory=utc_now)
    history: list[HistoryEntry] = Field(default_factory=list)
    rejected: list[str] = Field(default_factory=list, description="Versions refused or rolled back; not retried unless forced.")
    progress: dict | None = Field(None, description="Download progress {done, total} (not persisted on every chunk).")


class UpdateStateMachine:
    def __init__(self, state_dir: Path, model: str, *, max_attempts: int = 5, max_canary_attempts: int = 2,
                 max_steps: int = 40, on_change: Callable[[UpdateRecord], None] | None = None) -> None:
        self.path = Path(state_dir) / "ota" / f"{model}.json"
        self.model = model
        self.max_attempts, self.max_canary_attempts, self.max_steps = max_attempts, max_canary_attempts, max_steps
        self.on_change = on_change
        self.record = self._load()
        self._gauge()

    def _load(self) -> UpdateRecord:
        try:
            return UpdateRecord.model_validate(json.loads(self.path.read_text()))
        except FileNotFoundError:
            return UpdateRecord(model=self.model)
        except (OSError, ValueError, ValidationError) as e:
            # Not a torn write (atomic_write), so outside damage: start clean but loudly.
            log.error("%s unreadable (%s); starting from idle", self.path, e)
            return UpdateRecord(model=self.model, reason=f"state file unreadable: {e}")

    @property
    def state(self) -> State:
        return self.record.state

    def limit(self, state: State) -> int:
        return self.max_canary_attempts if state is S.CANARY else self.max_attempts

    def fire(self, event: Event, *, reason: str | None = None, code: str | None = None, **fields) -> State:
        """Apply ``event``; persist; notify. Loop counters may turn it into GIVE_UP."""
        cur = self.record.state
        nxt = TRANSITIONS.get((cur, event))
        if nxt is None:
            raise InvalidTransition(f"{self.model}: event {event.value!r} not allowed in state {cur.value!r}",
                                    state=cur.value, event=event.value)
        rec = self.record.model_copy(deep=True)
        for k, v in fields.items():
            setattr(rec, k, v)
        rec.steps = 1 if event is E.START else rec.steps + 1
        rec.attempts = rec.attempts + 1 if nxt is cur and event is not E.START else 1
        if nxt in IN_FLIGHT and (rec.attempts > self.limit(nxt) or rec.steps > self.max_steps):
            why = (f"{nxt.value} started {rec.attempts} times" if rec.attempts > self.limit(nxt)
                   else f"{rec.steps} transitions without settling")
            give_up = TRANSITIONS[(cur, E.GIVE_UP)]
            return self._commit(cur, rec, E.GIVE_UP, give_up, f"retries exhausted: {why} (last: {reason})", "retries_exhausted")
        return self._commit(cur, rec, event, nxt, reason, code)

    def _commit(self, cur: State, rec: UpdateRecord, event: Event, nxt: State, reason: str | None, code: str | None) -> State:
        rec.state, rec.reason, rec.code = nxt, reason, code
        rec.updated_at = utc_now()
        rec.progress = None
        if nxt in RESTING:
            rec.attempts = 0
        # Refusal is recorded in the same atomic write as the state, so a crash
        # cannot leave a failed version that the next poll would retry. Running
        # out of download retries is the network's fault, not the version's.
        refused = nxt is S.ROLLED_BACK or (nxt is S.FAILED and not (event is E.GIVE_UP and cur is S.DOWNLOADING))
        if refused and rec.target and rec.target not in rec.rejected:
            rec.rejected = (rec.rejected + [rec.target])[-REJECTED_LEN:]
        rec.history = (rec.history + [HistoryEntry(state=nxt, event=event, at=rec.updated_at, reason=reason)])[-HISTORY_LEN:]
        atomic_write_json(self.path, rec.model_dump(mode="json"))
        self.record = rec
        TRANSITION_COUNT.labels(self.model, nxt.value).inc()
        self._gauge()
        log.info("%s: %s --%s--> %s%s", self.model, cur.value, event.value, nxt.value, f" ({reason})" if reason else "")
        self.notify()
        return nxt

    def notify(self) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change(self.record)
        except Exception:  # a broken publisher must not break the update
            log.exception("%s: progress callback failed", self.model)

    def _gauge(self) -> None:
        for s in State:
            STATE.labels(self.model, s.value).set(1 if s is self.record.state else 0)
