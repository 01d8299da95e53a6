"""What a measurement ran on: CPU, cores, memory and library versions (for RESULTS.md).

Not for: timing itself (the benchmarks) or anything a study measures.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def _proc_field(path: str, key: str) -> str | None:
    """The value of the first ``key: value`` line of a /proc file, or None."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine_info() -> dict[str, Any]:
    """CPU model, logical CPUs, RAM, torch threads, versions and the load average right now."""
    import torch
    import transformers

    mem = _proc_field("/proc/meminfo", "MemTotal")  # "24683432 kB"
    return {
        "cpu": _proc_field("/proc/cpuinfo", "model name")
        or platform.processor()
        or platform.machine(),
        "logical_cpus": os.cpu_count(),
        "ram": f"{int(mem.split()[0]) / 2**20:.1f} GiB" if mem else "?",
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def describe_machine() -> str:
    """One line for a report, e.g. ``AMD EPYC ..., 2 cores, 23.5 GiB RAM, torch 2.14.1``."""
    info = machine_info()
    return f"{info['cpu']}, {info['logical_cpus']} cores, {info['ram']} RAM, torch {info['torch']}"
