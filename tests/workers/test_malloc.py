"""keep_freed_blocks(): a freed block of a few MB stays in the heap, so the next allocation of its
size reuses it instead of mapping and faulting in fresh pages (the model runner calls it on CPU);
in a thread other than the main one too, whose heaps glibc unmaps once they empty."""

from __future__ import annotations

import ctypes
import threading

import pytest

from radixrt.workers.malloc import keep_freed_blocks


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]  # fmt: skip


def _mallinfo2():
    try:
        fn = ctypes.CDLL(None).mallinfo2
    except AttributeError:
        return None
    fn.restype = _Mallinfo2
    return fn


@pytest.mark.skipif(_mallinfo2() is None, reason="glibc 2.33+ only")
def test_a_freed_12_mb_block_stays_in_the_heap():
    assert keep_freed_blocks()
    info = _mallinfo2()
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size = 12 << 20
    mapped_before = info().hblkhd
    block = libc.malloc(size)
    assert block and info().hblkhd == mapped_before  # from the heap, not a mapping of its own
    libc.free(block)
    assert info().fordblks >= size  # kept for reuse, not trimmed off
    again = libc.malloc(size)
    assert again and info().hblkhd == mapped_before
    libc.free(again)


@pytest.mark.skipif(_mallinfo2() is None, reason="glibc 2.33+ only")
def test_a_thread_keeps_its_freed_blocks_mapped():
    """A new thread allocates from its own arena (heaps of at most 64 MB): the blocks come from
    heaps, and a second round of the same allocations maps nothing new."""
    assert keep_freed_blocks()
    info = _mallinfo2()
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    system = []

    def steps():
        for _ in range(2):
            blocks = [libc.malloc(12 << 20) for _ in range(4)]  # more than one heap holds
            assert all(blocks)
            for block in blocks:
                libc.free(block)
            system.append(info().arena)  # bytes the arenas hold from the system

    thread = threading.Thread(target=steps)
    thread.start()
    thread.join()
    assert system[0] == system[1] and system[0] >= 48 << 20
