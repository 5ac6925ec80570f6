"""Test-only launcher: the zsfs command with slow compaction slices.

Each slice moves at most 4 objects and takes 20 ms more, holding the event loop as a
big slice would: a pool that a test fragments in a few seconds then takes seconds to
compact, as a large pool does, so a test can act while a compaction is under way. Used
by test_fs_fault.py.
"""

import sys
import time

import zsfs.zsmalloc
from zsfs.cli import main

SLICE_OBJECTS = 4
SLICE_EXTRA_SECONDS = 0.020
_compact_steps = zsfs.zsmalloc.Pool.compact_steps


def _slow_compact_steps(self, budget=1024):
    for pages in _compact_steps(self, min(budget, SLICE_OBJECTS)):
        time.sleep(SLICE_EXTRA_SECONDS)
        yield pages


zsfs.zsmalloc.Pool.compact_steps = _slow_compact_steps
sys.exit(main())
