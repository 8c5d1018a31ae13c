"""Is there a usable NVIDIA GPU here? Asked of the driver itself, before TensorRT is touched.

The TensorRT lean runtime does not raise when no driver exists: it logs an error and crashes
later. So `auto` asks libcuda directly through ctypes (no CUDA package needed, works the same
on x86 and Jetson) and only then imports TensorRT.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76


@dataclass(frozen=True)
class GpuProbe:
    available: bool
    reason: str  # why not, or what was found
    name: str = ""
    compute_capability: tuple[int, int] = (0, 0)


def probe_gpu(device: int = 0) -> GpuProbe:
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return GpuProbe(False, "no NVIDIA driver (libcuda.so.1 not found)")
    status = cuda.cuInit(0)
    if status != 0:
        return GpuProbe(False, f"the NVIDIA driver is installed but cuInit failed (CUDA error {status}); is a GPU present and the driver loaded?")
    count = ctypes.c_int(0)
    if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value <= device:
        return GpuProbe(False, f"no CUDA device {device} (the driver reports {count.value})")
    handle = ctypes.c_int(0)
    if cuda.cuDeviceGet(ctypes.byref(handle), device) != 0:
        return GpuProbe(False, f"cuDeviceGet({device}) failed")
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    cuda.cuDeviceGetAttribute(ctypes.byref(major), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, handle)
    cuda.cuDeviceGetAttribute(ctypes.byref(minor), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, handle)
    name = ctypes.create_string_buffer(128)
    cuda.cuDeviceGetName(name, len(name), handle)
    label = name.value.decode(errors="replace")
    return GpuProbe(True, f"{label} (sm_{major.value}{minor.value})", label, (major.value, minor.value))
