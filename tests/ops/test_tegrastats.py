"""The tegrastats line parser (edge_agent/ops/tegrastats.py) on each module's documented format."""

from __future__ import annotations

import pytest
from tegrastats_lines import NANO_JP4, ORIN_JP5, ORIN_JP6, XAVIER_BUSY, XAVIER_IDLE

from edge_agent.ops.tegrastats import parse

MB = 1024 * 1024


def test_xavier_jetpack5():
    s = parse(XAVIER_BUSY)
    assert (s.ram_used_bytes, s.ram_total_bytes, s.ram_lfb_bytes) == (9120 * MB, 31920 * MB, 3121 * 4 * MB)
    assert (s.swap_used_bytes, s.swap_total_bytes) == (12 * MB, 15960 * MB)
    assert s.gpu_load == pytest.approx(0.98) and s.gpu_hz == 1377e6
    assert s.emc_load == pytest.approx(0.47) and s.emc_hz == 2133e6
    assert [c[0] for c in s.cpu] == [str(i) for i in range(8)] and s.cpu[1][1:] == (pytest.approx(0.41), 2265e6)
    # "GPU@52.5C" is a temperature and "GPU 11932mW/9876mW" a rail: same name, both read.
    assert s.temperatures["gpu"] == 52.5 and s.temperatures["tdiode"] == 43.25 and len(s.temperatures) == 8
    assert s.power_mw == {"GPU": (11932, 9876), "CPU": (2451, 2210), "SOC": (3532, 3401), "CV": (0, 0),
                          "VDDRQ": (1244, 1102), "SYS5V": (3960, 3811)}


def test_xavier_offline_cores_are_left_out():
    s = parse(XAVIER_IDLE)
    assert [c[0] for c in s.cpu] == ["0", "1", "2", "3"]
    assert s.gpu_load == 0.0 and s.gpu_hz == 114e6


def test_orin_jetpack5_per_gpc_clock_sensors_off_and_nc_rails():
    s = parse(ORIN_JP5)
    assert s.gpu_load == pytest.approx(0.61) and s.gpu_hz == 918e6
    assert len(s.cpu) == 8
    # -256C: switched-off sensors (CV0..2, GPU on this unit) are absent, not -256.
    assert s.temperatures == {"cpu": 45.5, "tboard": 34.0, "soc2": 41.843, "tdiode": 36.5, "soc0": 42.343, "tj": 45.5, "soc1": 41.5}
    assert s.power_mw == {"VDD_GPU_SOC": (1234, 1234), "VDD_CPU_CV": (400, 398), "VIN_SYS_5V0": (3224, 3224),
                          "VDDQ_VDD2_1V8AO": (402, 402)}
    assert s.ram_lfb_bytes == 5733 * 4 * MB


def test_orin_jetpack6_lower_case_sensors_and_load_without_clock():
    s = parse(ORIN_JP6)
    assert s.gpu_load == pytest.approx(0.12) and s.gpu_hz is None
    assert s.emc_load is None  # not printed: absent, not 0
    assert s.temperatures["gpu"] == 96.718 and s.temperatures["tj"] == 97.5
    assert s.power_mw["VDD_IN"] == (4602, 4587)
    assert s.ram_lfb_bytes == 2 * MB


def test_nano_jetpack4_rails_without_units():
    s = parse(NANO_JP4)
    assert s.power_mw == {"POM_5V_IN": (2545, 2547), "POM_5V_GPU": (0, 0), "POM_5V_CPU": (549, 529)}
    assert s.gpu_load == 0.0 and s.gpu_hz is None and s.temperatures["pmic"] == 100.0


@pytest.mark.parametrize("line", ["", "tegrastats: permission denied", "Error: unable to open /sys/devices/gpu.0/load"])
def test_lines_without_fields_are_not_samples(line):
    assert parse(line) is None


def test_orin_overcurrent_events_from_a_soctherm_oc_hwmon_tree(tmp_path):
    # The sysfs layout of the tegra234-oc-event driver: a hwmon device named soctherm_oc, ocN_event_cnt files.
    from edge_agent.ops.soctherm import find_soctherm_oc, overcurrent_events

    (tmp_path / "hwmon0").mkdir()
    (tmp_path / "hwmon0" / "name").write_text("ina3221\n")
    oc = tmp_path / "hwmon3"
    oc.mkdir()
    (oc / "name").write_text("soctherm_oc\n")
    for n, count in ((1, 0), (2, 17), (3, 2)):
        (oc / f"oc{n}_event_cnt").write_text(f"{count}\n")
        (oc / f"oc{n}_throt_en").write_text("1\n")
    assert find_soctherm_oc(tmp_path) == oc
    assert overcurrent_events(oc) == {"oc1": 0, "oc2": 17, "oc3": 2}
    (tmp_path / "hwmon3" / "name").write_text("soctherm\n")
    assert find_soctherm_oc(tmp_path) is None  # Xavier: no such device, nothing read
