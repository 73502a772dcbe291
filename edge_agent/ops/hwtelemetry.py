"""Jetson and GPU telemetry: helper threads that read the hardware, gauges read at scrape time.

Two readers, each in its own daemon thread so the event loop never waits on
the hardware:

- ``TegrastatsReader`` runs ``tegrastats --interval N`` and keeps the last
  line it printed (parsed by ``tegrastats.py``). A tegrastats that exits or
  crashes is started again after a backoff delay (``backoff.py``), and that is
  logged once (then at debug level) so a unit without the tool's rights does
  not fill its journal.
- ``NvmlReader`` polls NVML (``nvml.py``) every interval on dGPU hosts.

``HardwareTelemetry`` is the daemon's component (``start``/``stop``/``status``):
a reader whose hardware is absent (no tegrastats on PATH, no NVML) is never
started, and ``TelemetryCollector`` exports only what a reader has seen within
``telemetry.stale_after_s``: absent hardware, or a tegrastats that has stopped
printing, means absent gauges, never zeros. Names: docs/OPERATIONS.md
"Jetson and GPU telemetry".
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import threading
import time
from typing import Iterable, List, Optional

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..backoff import backoff_delay
from . import nvml
from .soctherm import find_soctherm_oc, overcurrent_events
from .tegrastats import TegraSample, parse

log = logging.getLogger("edge_agent.telemetry")


class TegrastatsReader:
    """``tegrastats`` in a helper thread; ``latest`` is (monotonic time, sample) or None."""

    def __init__(self, exe: str, interval_ms: int, backoff_s: tuple, oc_device=None) -> None:
        self.exe = exe
        self.interval_ms = interval_ms
        self.backoff_s = backoff_s
        self.latest: Optional[tuple] = None
        # Orin's soctherm_oc hwmon device (soctherm.py), read with each line: throttling tegrastats does not print.
        self.oc_device = oc_device
        self.overcurrent: dict = {}
        self.restarts = 0
        self.state = "starting"
        self._stop = threading.Event()
        self._proc: Optional[subprocess.Popen] = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="tegrastats", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _spawn(self) -> Optional[subprocess.Popen]:
        with self._lock:
            if self._stop.is_set():
                return None
            self._proc = subprocess.Popen([self.exe, "--interval", str(self.interval_ms)], stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True, errors="replace")
            return self._proc

    def _run(self) -> None:
        attempt, logged = 0, False
        while not self._stop.is_set():
            got, why = False, ""
            try:
                proc = self._spawn()
                if proc is None:
                    break
                self.state = "running"
                for line in proc.stdout:  # type: ignore[union-attr]
                    sample = parse(line)
                    if sample is not None:
                        if self.oc_device is not None:
                            self.overcurrent = overcurrent_events(self.oc_device)
                        self.latest = (time.monotonic(), sample)
                        got = True
                why = f"exited with status {proc.wait()}"
                proc.stdout.close()  # type: ignore[union-attr]
            except OSError as e:
                why = f"cannot run: {e}"
            if self._stop.is_set():
                break
            attempt = 0 if got else attempt + 1
            delay = backoff_delay(attempt, *self.backoff_s)
            self.restarts += 1
            self.state = "restarting"
            (log.debug if logged else log.warning)(
                "tegrastats (%s) %s; starting it again in %.1fs%s", self.exe, why, delay,
                "" if logged else " (further restarts are logged at debug level)")
            logged = True
            self._stop.wait(delay)
        self.state = "stopped"

    def stop(self, timeout: float = 5.0) -> None:
        """End tegrastats and the thread (blocking, at most ~``timeout`` s)."""
        self._stop.set()
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout / 2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def status(self) -> dict:
        return {"source": "tegrastats", "exe": self.exe, "state": self.state, "restarts": self.restarts}


class NvmlReader:
    """Polls every GPU through NVML once an interval; ``latest`` is (monotonic time, [GpuSample]) or None."""

    def __init__(self, nv, interval_ms: int) -> None:
        self.nv = nv
        self.interval = interval_ms / 1000.0
        self.latest: Optional[tuple] = None
        self.state = "starting"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nvml", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        logged = False
        while not self._stop.is_set():
            try:
                self.latest = (time.monotonic(), nvml.poll(self.nv))
                self.state = "running"
            except Exception as e:  # noqa: BLE001 - a driver hiccup must not end the thread
                self.state = "failing"
                if not logged:
                    log.warning("NVML poll failed: %s (logged once)", e)
                    logged = True
            self._stop.wait(self.interval)
        nvml.close_nvml(self.nv)
        self.state = "stopped"

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def status(self) -> dict:
        return {"source": "nvml", "state": self.state}


def _gauge(name: str, doc: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def jetson_families(s: TegraSample, hot_c: float) -> List:
    """The edge_agent_jetson_* gauges of one tegrastats sample (only the fields it had)."""
    out = []

    def one(name: str, doc: str, value) -> None:
        if value is not None:
            out.append(GaugeMetricFamily(name, doc, value=value))

    one("edge_agent_jetson_ram_used_bytes", "RAM in use (tegrastats RAM; CPU and GPU share it).", s.ram_used_bytes)
    one("edge_agent_jetson_ram_total_bytes", "RAM the kernel manages (tegrastats RAM).", s.ram_total_bytes)
    one("edge_agent_jetson_ram_largest_free_block_bytes", "Largest free block of RAM (tegrastats lfb: count x block size).", s.ram_lfb_bytes)
    one("edge_agent_jetson_swap_used_bytes", "Swap in use (tegrastats SWAP).", s.swap_used_bytes)
    one("edge_agent_jetson_swap_total_bytes", "Swap size (tegrastats SWAP).", s.swap_total_bytes)
    one("edge_agent_jetson_gpu_load_ratio", "GPU (GR3D) load, 0..1.", s.gpu_load)
    one("edge_agent_jetson_gpu_frequency_hertz", "GPU (GR3D) clock; the highest GPC's on Orin.", s.gpu_hz)
    one("edge_agent_jetson_emc_load_ratio", "Memory controller (EMC) load, 0..1: the shared DRAM's bandwidth in use.", s.emc_load)
    one("edge_agent_jetson_emc_frequency_hertz", "Memory controller (EMC) clock.", s.emc_hz)
    if s.cpu:
        load = _gauge("edge_agent_jetson_cpu_load_ratio", "Load of each online CPU core, 0..1.", ["core"])
        freq = _gauge("edge_agent_jetson_cpu_frequency_hertz", "Clock of each online CPU core.", ["core"])
        for core, ratio, hz in s.cpu:
            load.add_metric([core], ratio)
            if hz is not None:
                freq.add_metric([core], hz)
        out += [load, freq]
    if s.temperatures:
        temp = _gauge("edge_agent_jetson_temperature_celsius", "Temperature of each thermal sensor tegrastats reports (names lower-cased).", ["sensor"])
        for sensor, c in sorted(s.temperatures.items()):
            temp.add_metric([sensor], c)
        out.append(temp)
        out.append(GaugeMetricFamily("edge_agent_jetson_thermal_throttle_temperature_celsius",
                                     "telemetry.throttle_temp_c: the temperature at which this unit throttles.", value=hot_c))
        out.append(GaugeMetricFamily("edge_agent_jetson_thermal_throttling",
                                     "1 while a sensor is at or above telemetry.throttle_temp_c.",
                                     value=1 if max(s.temperatures.values()) >= hot_c else 0))
    if s.power_mw:
        now = _gauge("edge_agent_jetson_power_watts", "Power of each rail tegrastats reports (current reading).", ["rail"])
        avg = _gauge("edge_agent_jetson_power_average_watts", "Power of each rail, tegrastats' running average.", ["rail"])
        for rail, (cur, mean) in sorted(s.power_mw.items()):
            now.add_metric([rail], cur / 1000.0)
            avg.add_metric([rail], mean / 1000.0)
        out += [now, avg]
    return out


def gpu_families(samples: List[nvml.GpuSample]) -> List:
    """The edge_agent_gpu_* gauges of one NVML poll."""
    info = _gauge("edge_agent_gpu_info", "Each NVIDIA GPU NVML sees; value 1.", ["gpu", "name"])
    util = _gauge("edge_agent_gpu_utilization_ratio", "GPU utilisation over NVML's last sample period, 0..1.", ["gpu"])
    used = _gauge("edge_agent_gpu_memory_used_bytes", "GPU memory in use.", ["gpu"])
    total = _gauge("edge_agent_gpu_memory_total_bytes", "GPU memory size.", ["gpu"])
    temp = _gauge("edge_agent_gpu_temperature_celsius", "GPU core temperature.", ["gpu"])
    power = _gauge("edge_agent_gpu_power_watts", "GPU board power draw.", ["gpu"])
    thr = _gauge("edge_agent_gpu_throttled", "1 while the GPU's clocks are held down for this reason (NVML throttle reasons).", ["gpu", "reason"])
    for s in samples:
        info.add_metric([s.index, s.name], 1)
        for fam, v in ((util, s.utilization), (used, s.memory_used_bytes), (total, s.memory_total_bytes),
                       (temp, s.temperature_c), (power, s.power_w)):
            if v is not None:
                fam.add_metric([s.index], v)
        for reason, on in s.throttled or ():
            thr.add_metric([s.index, reason], on)
    return [f for f in (info, util, used, total, temp, power, thr) if f.samples]


class TelemetryCollector:
    """Registered once; exports what the running component's readers saw recently."""

    def __init__(self) -> None:
        self.component: Optional["HardwareTelemetry"] = None

    def collect(self):
        comp = self.component
        if comp is None:
            return
        now = time.monotonic()
        fresh = comp.cfg.stale_after_s
        t = comp.tegrastats
        if t is not None:
            yield CounterMetricFamily("edge_agent_jetson_tegrastats_restarts", "Times tegrastats exited and was started again.",
                                      value=t.restarts)
            if t.latest is not None and now - t.latest[0] <= fresh:
                yield from jetson_families(t.latest[1], comp.cfg.throttle_temp_c)
                if t.overcurrent:
                    oc = CounterMetricFamily("edge_agent_jetson_overcurrent_events", "Over-current events that throttled the SoC "
                                             "(Orin's soctherm_oc hwmon ocN_event_cnt).", labels=["oc"])
                    for name, n in sorted(t.overcurrent.items()):
                        oc.add_metric([name], n)
                    yield oc
        n = comp.nvml
        if n is not None and n.latest is not None and now - n.latest[0] <= fresh:
            yield from gpu_families(n.latest[1])


COLLECTOR = TelemetryCollector()
_registered = False


class HardwareTelemetry:
    """The daemon's telemetry component (config ``telemetry``)."""

    name = "telemetry"

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self.tegrastats: Optional[TegrastatsReader] = None
        self.nvml: Optional[NvmlReader] = None

    async def start(self) -> None:
        global _registered
        cfg = self.cfg
        exe = shutil.which(cfg.tegrastats)
        if exe is None:
            log.info("no %s on PATH: not a Jetson (or JetPack's tools are missing); no Jetson gauges", cfg.tegrastats)
        else:
            self.tegrastats = TegrastatsReader(exe, cfg.interval_ms, (cfg.restart_min_s, cfg.restart_max_s), find_soctherm_oc())
            self.tegrastats.start()
            log.info("reading %s every %d ms", exe, cfg.interval_ms)
        if cfg.nvml:
            # nvmlInit loads the driver library: not on the loop.
            nv = await asyncio.get_running_loop().run_in_executor(None, nvml.open_nvml)
            if nv is not None:
                self.nvml = NvmlReader(nv, cfg.interval_ms)
                self.nvml.start()
        if not _registered:
            REGISTRY.register(COLLECTOR)
            _registered = True
        COLLECTOR.component = self

    async def stop(self) -> None:
        if COLLECTOR.component is self:
            COLLECTOR.component = None
        readers = [r for r in (self.tegrastats, self.nvml) if r is not None]
        if readers:
            await asyncio.get_running_loop().run_in_executor(None, lambda: [r.stop() for r in readers])

    def status(self) -> dict:
        return {"readers": [r.status() for r in (self.tegrastats, self.nvml) if r is not None]}
