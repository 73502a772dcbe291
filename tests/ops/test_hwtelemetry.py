"""Jetson and GPU telemetry on the real daemon (edge_agent/ops/hwtelemetry.py).

tegrastats and NVML cannot exist here: a fake ``tegrastats`` first on the
daemon's PATH replays recorded lines (tegrastats_lines.py), and a stub
``pynvml`` on its PYTHONPATH plays two GPUs (nvml_stub/). Everything else is
real: the daemon process, its helper threads, the subprocess it reads, and
/metrics scraped over its socket.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from daemon_proc import copy_digits, wait_for
from tegrastats_lines import ORIN_JP6, XAVIER_BUSY, fake_tegrastats, starts

STUB = Path(__file__).resolve().parent / "nvml_stub"
FAST = {"telemetry": {"interval_ms": 100, "restart_min_s": 0.2, "restart_max_s": 0.4}}


def value(text: str, name: str, labels: str = "") -> float:
    """The one sample of ``name`` whose label set is exactly ``labels`` ('' for none)."""
    want = f"{name}{{{labels}}}" if labels else name
    hits = [ln.rsplit(" ", 1)[1] for ln in text.splitlines() if ln.rsplit(" ", 1)[0] == want]
    assert len(hits) == 1, f"{want}: {hits}"
    return float(hits[0])


def names(text: str, prefix: str) -> set:
    return {ln.split("{")[0].split(" ")[0] for ln in text.splitlines() if ln.startswith(prefix)}


def no_nvml_env() -> dict:
    # Whatever pynvml this machine may have: here it must not find a GPU either way.
    return {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_xavier_gauges_from_tegrastats_and_a_clean_stop(agent_factory, tmp_path):
    a = agent_factory(config=FAST, env=fake_tegrastats(tmp_path, [XAVIER_BUSY]))
    copy_digits(a.models_dir)
    a.start()
    wait_for(lambda: "edge_agent_jetson_gpu_load_ratio" in a.metrics(), timeout=20)
    t = a.metrics()
    assert value(t, "edge_agent_jetson_gpu_load_ratio") == pytest.approx(0.98)
    assert value(t, "edge_agent_jetson_gpu_frequency_hertz") == 1377e6
    assert value(t, "edge_agent_jetson_emc_load_ratio") == pytest.approx(0.47)
    assert value(t, "edge_agent_jetson_ram_used_bytes") == 9120 * 2**20
    assert value(t, "edge_agent_jetson_ram_largest_free_block_bytes") == 3121 * 4 * 2**20
    assert value(t, "edge_agent_jetson_temperature_celsius", 'sensor="gpu"') == 52.5
    assert value(t, "edge_agent_jetson_temperature_celsius", 'sensor="tdiode"') == 43.25
    assert value(t, "edge_agent_jetson_power_watts", 'rail="GPU"') == pytest.approx(11.932)
    assert value(t, "edge_agent_jetson_power_average_watts", 'rail="SYS5V"') == pytest.approx(3.811)
    assert value(t, "edge_agent_jetson_cpu_load_ratio", 'core="7"') == pytest.approx(0.28)
    assert value(t, "edge_agent_jetson_thermal_throttling") == 0
    assert names(t, "edge_agent_gpu_") == set()  # no NVML here
    assert a.status()["telemetry"]["readers"][0]["state"] == "running"
    pids = starts(tmp_path)
    assert len(pids) == 1 and alive(pids[0])
    assert a.stop() == 0
    # The helper thread ended tegrastats (SIGTERM) on the way out, not the pipe closing at exit.
    assert starts(tmp_path, ".term") == pids
    wait_for(lambda: not alive(pids[0]), timeout=5)


def test_orin_jetpack6_and_two_nvml_gpus(agent_factory, tmp_path):
    env = fake_tegrastats(tmp_path, [ORIN_JP6])
    env["PYTHONPATH"] = os.pathsep.join([str(STUB), os.environ.get("PYTHONPATH", "")])
    a = agent_factory(config={"telemetry": {**FAST["telemetry"], "throttle_temp_c": 97.0}}, env=env)
    copy_digits(a.models_dir)
    a.start()
    wait_for(lambda: "edge_agent_gpu_utilization_ratio" in (t := a.metrics()) and "edge_agent_jetson_power" in t, timeout=20)
    t = a.metrics()
    assert value(t, "edge_agent_jetson_power_watts", 'rail="VDD_CPU_GPU_CV"') == pytest.approx(0.520)
    assert value(t, "edge_agent_jetson_temperature_celsius", 'sensor="tj"') == 97.5
    assert value(t, "edge_agent_jetson_thermal_throttling") == 1  # tj 97.5 >= throttle_temp_c 97
    assert value(t, "edge_agent_jetson_thermal_throttle_temperature_celsius") == 97.0
    assert "edge_agent_jetson_emc_load_ratio" not in t  # not printed by this tegrastats: absent, not 0
    assert value(t, "edge_agent_gpu_info", 'gpu="0",name="NVIDIA A2"') == 1
    assert value(t, "edge_agent_gpu_utilization_ratio", 'gpu="1"') == pytest.approx(0.91)
    assert value(t, "edge_agent_gpu_memory_used_bytes", 'gpu="1"') == 20e9
    assert value(t, "edge_agent_gpu_memory_total_bytes", 'gpu="0"') == 16e9
    assert value(t, "edge_agent_gpu_temperature_celsius", 'gpu="1"') == 88
    assert value(t, "edge_agent_gpu_power_watts", 'gpu="1"') == pytest.approx(71.5)
    assert 'edge_agent_gpu_power_watts{gpu="0"}' not in t  # GPU 0 does not support power: left out
    assert value(t, "edge_agent_gpu_throttled", 'gpu="1",reason="hw_thermal"') == 1
    assert value(t, "edge_agent_gpu_throttled", 'gpu="0",reason="hw_thermal"') == 0
    assert {r["source"] for r in a.status()["telemetry"]["readers"]} == {"tegrastats", "nvml"}


def test_absent_hardware_exports_nothing_and_is_no_error(agent_factory, tmp_path):
    env = no_nvml_env()
    env["PATH"] = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if not (Path(p) / "tegrastats").exists())
    a = agent_factory(config=FAST, env=env)
    copy_digits(a.models_dir)
    a.start()
    t = a.metrics()
    assert names(t, "edge_agent_jetson_") == set() and names(t, "edge_agent_gpu_") == set()
    assert a.status()["ready"] and a.status()["telemetry"] == {"readers": []}
    assert "no tegrastats on PATH" in a.log() and " ERROR " not in a.log()
    assert a.stop() == 0


def test_a_tegrastats_that_crashes_is_restarted_with_backoff_and_logged_once(agent_factory, tmp_path):
    a = agent_factory(config=FAST, env={**fake_tegrastats(tmp_path, [XAVIER_BUSY], exit_after=2), **no_nvml_env()})
    copy_digits(a.models_dir)
    a.start()
    wait_for(lambda: len(starts(tmp_path)) >= 4, timeout=30)
    log = a.log()
    assert log.count("exited with status 3") == 1, log  # once, however often it crashes
    t = a.metrics()
    assert value(t, "edge_agent_jetson_tegrastats_restarts_total") >= 3
    assert a.status()["ready"]
    a.signal(signal.SIGTERM)
    assert a.wait_exit(15) == 0
    wait_for(lambda: not any(alive(p) for p in starts(tmp_path)), timeout=5)


def test_a_tegrastats_that_stops_printing_leaves_its_gauges_absent_not_frozen(agent_factory, tmp_path):
    config = {"telemetry": {**FAST["telemetry"], "stale_after_s": 1.0}}
    a = agent_factory(config=config, env={**fake_tegrastats(tmp_path, [XAVIER_BUSY], hang_after=3), **no_nvml_env()})
    copy_digits(a.models_dir)
    a.start()
    wait_for(lambda: "edge_agent_jetson_gpu_load_ratio" in a.metrics(), timeout=20)
    wait_for(lambda: "edge_agent_jetson_gpu_load_ratio" not in a.metrics(), timeout=20)
    t = a.metrics()
    assert names(t, "edge_agent_jetson_") == {"edge_agent_jetson_tegrastats_restarts_total"}
    assert len(starts(tmp_path)) == 1  # hung, not exited: not restarted
