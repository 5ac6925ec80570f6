"""The C heap: one malloc arena for every thread, and giving its free memory back.

glibc gives a thread that calls malloc while another holds the arena's lock an
arena of its own (up to eight per core), and what is freed in an arena stays
there: after ``rm -rf`` of the corpus the compressor and decoder threads' two
arenas still held 2.9 MB that neither ``malloc_trim`` nor anything else gave
back. Those threads allocate little and in large pieces (a batch's frames, a
read's buffer), so sharing the main arena's lock costs them nothing measurable,
and a single heap is one that ``malloc_trim`` can shrink.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_ARENA_MAX = -8              # mallopt's parameter (glibc's malloc.h)

try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    _mallopt = _libc.mallopt
    _malloc_trim = _libc.malloc_trim
except (OSError, AttributeError):   # not glibc
    _mallopt = _malloc_trim = None


def share_one_arena() -> bool:
    """Make every thread allocate from the main arena; True if that is in effect.

    To be called before any thread starts. ``MALLOC_ARENA_MAX`` in the
    environment, if set, is left to decide.
    """
    if _mallopt is None or "MALLOC_ARENA_MAX" in os.environ:
        return False
    return bool(_mallopt(_M_ARENA_MAX, 1))


def release() -> None:
    """Give the C heap's free memory back to the kernel (glibc's malloc_trim).

    Chunk payloads and request buffers come and go through malloc; without a trim
    glibc keeps the freed space and RSS stays above what zsfs holds.
    """
    if _malloc_trim is not None:
        _malloc_trim(0)
