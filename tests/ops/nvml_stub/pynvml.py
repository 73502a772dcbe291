"""A stand-in for nvidia-ml-py's ``pynvml`` (no NVIDIA GPU here), put on a test daemon's PYTHONPATH.

Two GPUs with the calls and types the real module has (names as in nvidia-ml-py 12.x):
GPU 0 does not support power readings (NVMLError, as on some boards), GPU 1 is
thermally throttled (HW thermal slowdown bit). Values are fixed so a test can
check them on /metrics.
"""


class NVMLError(Exception):
    pass


NVML_TEMPERATURE_GPU = 0
_GPUS = [
    {"name": b"NVIDIA A2", "util": 37, "used": 1_000_000_000, "total": 16_000_000_000, "temp": 64, "power_mw": None, "reasons": 0},
    {"name": "NVIDIA L4", "util": 91, "used": 20_000_000_000, "total": 24_000_000_000, "temp": 88, "power_mw": 71_500,
     "reasons": 0x40},
]
_init = [0]


class _Util:
    def __init__(self, gpu):
        self.gpu, self.memory = gpu, 0


class _Mem:
    def __init__(self, used, total):
        self.used, self.total, self.free = used, total, total - used


def nvmlInit():
    _init[0] += 1


def nvmlShutdown():
    _init[0] -= 1


def _need_init():
    if _init[0] < 1:
        raise NVMLError("Uninitialized")


def nvmlDeviceGetCount():
    _need_init()
    return len(_GPUS)


def nvmlDeviceGetHandleByIndex(i):
    _need_init()
    return _GPUS[i]


def nvmlDeviceGetName(h):
    return h["name"]


def nvmlDeviceGetUtilizationRates(h):
    return _Util(h["util"])


def nvmlDeviceGetMemoryInfo(h):
    return _Mem(h["used"], h["total"])


def nvmlDeviceGetTemperature(h, sensor):
    assert sensor == NVML_TEMPERATURE_GPU
    return h["temp"]


def nvmlDeviceGetPowerUsage(h):
    if h["power_mw"] is None:
        raise NVMLError("Not Supported")
    return h["power_mw"]


def nvmlDeviceGetCurrentClocksThrottleReasons(h):
    return h["reasons"]
