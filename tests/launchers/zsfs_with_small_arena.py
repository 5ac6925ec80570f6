"""Test-only launcher: the zsfs command with its page arena capped.

The arena reserves address space for as many pages as the machine has RAM and no
mount option changes that, so without ``size=`` or ``mem_limit=`` a test could never
reach its end. The first argument, ``--arena-bytes=N``, sets the arena's capacity;
the rest is the zsfs command line. Used by test_fs_fault.py.
"""

import functools
import sys

import zsfs.operations
from zsfs.cli import main

PREFIX = "--arena-bytes="

if len(sys.argv) < 2 or not sys.argv[1].startswith(PREFIX):
    sys.exit(f"usage: {sys.argv[0]} {PREFIX}N ZSFS-ARGS...")
capacity = int(sys.argv[1][len(PREFIX):])
zsfs.operations.Pool = functools.partial(zsfs.operations.Pool, arena_capacity=capacity)
sys.exit(main(sys.argv[2:]))
