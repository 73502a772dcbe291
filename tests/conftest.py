"""Fixtures shared by every test area: the real daemon as a subprocess."""

from __future__ import annotations

import pytest

from daemon_proc import AgentProcess


@pytest.fixture
def agent_factory():
    """Make AgentProcess objects; every one is killed and removed afterwards."""
    made: list[AgentProcess] = []

    def make(**kwargs) -> AgentProcess:
        a = AgentProcess(**kwargs)
        made.append(a)
        return a

    yield make
    for a in made:
        if a.proc is not None and a.proc.poll() is None:
            a.stop(timeout=15)
        a.cleanup()
