"""Peak memory of a piece of work, on the CPU (torch profiler allocation events) or the GPU.

`peak_mb(fn)` runs `fn()` once and returns the most memory the torch allocator held above what it held
when `fn` started, in MiB. On the CPU it reads the allocator's running total from the profiler's
allocation events (tracemalloc does not see torch tensors); on CUDA it uses max_memory_allocated.
`rss_mb()` / `peak_rss_mb()` read the process's resident set (and its high-water mark) from /proc.
`peak_mb` is used by `python benchmarks/logps_micro.py`, `python benchmarks/throughput.py` (each
configuration's live-tensor peak above its baseline after imports and model build) and
tests/test_logps.py.
"""

from __future__ import annotations

from typing import Callable

import torch


def _cpu_peak_mb(fn: Callable[[], object]) -> float:
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    allocations: list[tuple[int, int, int]] = []

    def walk(nodes) -> None:
        for node in nodes:
            if node.tag == _EventType.Allocation:
                f = node.extra_fields
                allocations.append((node.start_time_ns, f.alloc_size, f.total_allocated))
            walk(node.children)

    walk(prof.profiler.kineto_results.experimental_event_tree())
    if not allocations:
        return 0.0
    allocations.sort()
    start = allocations[0][2] - allocations[0][1]  # held before the first event
    return (max(total for _, _, total in allocations) - start) / 2**20


def peak_mb(fn: Callable[[], object], device: str = "cpu") -> float:
    """MiB the torch allocator held at most during `fn()`, above what it held before."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    return _cpu_peak_mb(fn)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def rss_mb() -> float:
    """Resident memory of this process now, MiB."""
    return _status_kb("VmRSS") / 1024


def peak_rss_mb() -> float:
    """Highest resident memory of this process so far (VmHWM), MiB."""
    return _status_kb("VmHWM") / 1024
