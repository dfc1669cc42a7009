"""The C allocator under torch on the CPU: freed tensor memory is kept in the process and reused.

glibc's malloc serves a block above its mmap threshold (128 KiB, rising to at most 32 MiB) with a fresh mapping and
unmaps it on free. A forward or backward allocates new activations, logits and gradients every step, so each of
them is then zero-filled by the kernel page by page on first touch. Serving blocks below MMAP_THRESHOLD from the
heap and never trimming its top keeps that memory mapped between steps, and page faults stop after the first few
steps (bench/README.md: what it gains for training and scoring, and what it costs in peak memory). Freed memory is
not handed back to the system until the process ends; a process whose malloc is not glibc's (jemalloc or tcmalloc
preloaded, musl) is left as it is.

    allocator.keep_freed_memory()   # first thing in a stage that runs a model; once per process
"""
import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
MMAP_THRESHOLD = 1 << 30  # blocks below 1 GiB come from the heap; larger ones (rare) are still mapped
TRIM_THRESHOLD = (1 << 31) - 1  # the most mallopt takes (an int): in effect, never trim


@functools.cache
def keep_freed_memory() -> bool:
    """Tell glibc's malloc to serve blocks below MMAP_THRESHOLD from the heap and to keep freed memory; whether it
    applied (False where the C library is not glibc or refuses)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "gnu_get_libc_version"):  # musl and others: no such mallopt parameters
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
