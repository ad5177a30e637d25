"""Facts about the machine this process runs on: CPU model and instruction sets, memory, versions.

Read once and cached, so a decision that depends on the CPU (which precisions are fast and exact
enough) and the header of every benchmark table describe the same machine. Nothing here imports
torch at module import time.
"""

from __future__ import annotations

import functools
import os
import platform
import resource
import sys
from dataclasses import dataclass

# Instruction-set flags of /proc/cpuinfo that decide how fast and how exact reduced precisions are.
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


@dataclass(frozen=True)
class CpuInfo:
    """The CPU's model name, its logical cores and the instruction-set flags ptxseg cares about."""

    model: str
    cores: int
    flags: frozenset[str]

    @property
    def native_bf16(self) -> bool:
        """bf16 arithmetic in hardware (AVX-512 BF16 or AMX); elsewhere it is emulated and slow."""
        return bool({"avx512_bf16", "amx_bf16"} & self.flags)

    @property
    def vnni(self) -> bool:
        """int8 dot products in hardware (VNNI or AMX); without them int8 convolutions saturate."""
        return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & self.flags)

    def isa(self) -> str:
        """The relevant flags present, e.g. 'avx2 avx512f avx512_vnni avx512_bf16'."""
        present = [f for f in ISA_FLAGS if f in self.flags]
        return " ".join(present) or "none of " + " ".join(ISA_FLAGS)


@functools.lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """This machine's CPU, read from /proc/cpuinfo (the platform's name elsewhere)."""
    model, flags = platform.processor() or platform.machine(), frozenset()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = frozenset(value.split())
    except OSError:
        pass
    return CpuInfo(model=model, cores=os.cpu_count() or 1, flags=flags)


def usable_cores() -> int:
    """The CPU cores this process may use (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def physical_cores() -> int:
    """The physical cores under this process's usable CPUs: logical CPUs that share a core (SMT
    siblings, as /sys reports them) count once. A virtual machine may not report its vCPUs'
    siblings; then every vCPU counts as a core."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return usable_cores()
    cores = set()
    for cpu in cpus:
        try:
            with open(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list") as f:
                cores.add(f.read().strip())
        except OSError:
            cores.add(str(cpu))
    return len(cores) or usable_cores()


def peak_rss_mb() -> float:
    """High-water mark of this process's resident memory.

    Linux's `VmHWM` belongs to the current address space. `ru_maxrss` would not do in a spawned
    worker: Linux carries the parent's high-water mark across fork and exec into it.
    """
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024.0


def rss_now_mb() -> float:
    """This process's resident memory now."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return peak_rss_mb()


def package_versions(names: tuple[str, ...]) -> dict[str, str]:
    """Installed versions of the named distributions ('-' for the ones not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "-"
    return out


def gpu_description() -> str:
    """The CUDA device's name and memory with the torch, CUDA and cuDNN versions, or 'none'."""
    import torch

    if not torch.cuda.is_available():
        return "none"
    index = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    return (
        f"{props.name} ({props.total_memory / 2**30:.0f} GiB; torch {torch.__version__}, "
        f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})"
    )


def process_age_s() -> float | None:
    """Seconds since this process started (Linux), so start-up includes the interpreter's own.

    None where /proc is not there.
    """
    try:
        with open("/proc/self/stat") as handle:
            # The command name (field 2) may hold spaces; fields after its ')' are plain.
            fields = handle.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as handle:
            uptime = float(handle.read().split()[0])
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime in ticks
    except (OSError, IndexError, ValueError):
        return None
    return max(0.0, uptime - started)


def process_context(preload: tuple[str, ...] = ()):
    """A multiprocessing context for worker pools: forkserver where there is one, else spawn.

    Workers fork from a small server that imported only `preload`, so they start quickly and
    inherit nothing from this process: no CUDA context, no thread pools, no locks held by
    threads at the moment of a fork.
    """
    import multiprocessing

    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        if preload:
            context.set_forkserver_preload(list(preload))
        return context
    return multiprocessing.get_context("spawn")
