"""The daemon's footing on its host, and what it shows its operators.

What lives here:
  host.py             umask, private directories, the descriptor limit (set once at start)
  logsetup.py         logs to stderr, text or JSON lines, escaped so a line cannot be forged
  metrics.py          the core Prometheus metrics, bound per model version
  sdnotify.py         systemd's notify protocol (ready, reloading, stopping, watchdog)
  hwtelemetry.py      Jetson and GPU telemetry: helper threads reading the hardware, gauges at scrape time
  tegrastats.py       one line of tegrastats parsed (GPU/EMC load, temperatures, power rails, RAM)
  nvml.py             one NVML poll of every dGPU (optional nvidia-ml-py)
  soctherm.py         Orin's over-current throttling events (hwmon soctherm_oc)
  doctor.py           `edge-agent doctor`: runs the checks in order and reports them
  doctor_probe.py     the doctor's Host (where it reads) and Check (one answer)
  doctor_platform.py  the doctor's checks of the unit: JetPack, Python, ONNX Runtime,
                      TensorRT / CUDA libraries, GPU, DLA, CPU INT8, systemd
  doctor_service.py   the doctor's checks of the daemon's resources: config,
                      directories, socket, broker, disk
"""
