"""Test-only launcher: the zsfs command with a bug planted in compaction.

The first compaction of the pool moves one slice of objects, then raises
RuntimeError from inside ``Pool.compact_steps``, the way a real bug would (the pool
is consistent there, as between any two slices). Later compactions work. Used by
test_fs_fault.py, which asks for no compaction itself: the first one is the
background task's.
"""

import sys

import zsfs.zsmalloc
from zsfs.cli import main

_compact_steps = zsfs.zsmalloc.Pool.compact_steps
_planted = [True]


def _buggy_compact_steps(self, budget=1024):
    steps = _compact_steps(self, budget)
    if not _planted:
        yield from steps
        return
    _planted.clear()
    for pages in steps:
        yield pages
        break
    raise RuntimeError("planted compactor bug")


zsfs.zsmalloc.Pool.compact_steps = _buggy_compact_steps
sys.exit(main())
