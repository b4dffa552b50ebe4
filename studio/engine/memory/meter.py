"""Peak CPU tensor memory of a piece of code, as torch's own CPU allocator counts it.

torch 2.14 has no CPU counterpart of torch.cuda.max_memory_allocated (torch.cpu has no memory
stats; the host-memory stats are the CUDA pinned-memory allocator's), and tracemalloc does not
see tensors (c10 allocates outside Python's allocator). What does exist is the profiler's
memory reporting: with profile_memory=True, c10's CPU allocator reports every allocation and
free together with its running total of live bytes. That total sees every CPU tensor buffer
(autograd's saved tensors, gradients, optimizer states, kernels' temporary buffers), not only
operator outputs as a dispatch mode would. It counts only blocks allocated while profiling,
so tensors that already exist (the weights) are added by the caller.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class Peak:
    bytes: int = 0  # highest live bytes allocated inside the block, above what it started with


def _allocations(prof):
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        stack.extend(event.children)
        fields = event.extra_fields
        if type(fields).__name__ == "_ExtraFields_Allocation" and fields.device.type == "cpu":
            yield event.start_time_ns, fields


@contextmanager
def peak_cpu_bytes():
    """with peak_cpu_bytes() as peak: ...; then peak.bytes."""
    from torch.profiler import ProfilerActivity, profile

    result = Peak()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        yield result
    # The allocator's total carries what earlier profiled blocks left alive: start from the
    # total before the first event. Events are ordered by time (a tree walk is not).
    events = sorted(_allocations(prof), key=lambda e: e[0])
    if events:
        start = events[0][1].total_allocated - events[0][1].alloc_size
        result.bytes = max(0, max(f.total_allocated for _, f in events) - start)
