"""Test-only launcher: the zsfs command, slow to start, as on a loaded machine.

Two steps take a second longer, each a window for a stop signal, and each says on
stderr when it begins:

* from mounting to serving (``slow start: serving in 1 s``): the mount is in the
  mount table, but nothing reads requests or listens for signals yet;
* the readahead thread (``slow start: readahead in 1 s``): serving has begun, and
  the thread's stat(2) of the mount point comes a second later.

Used by test_fs_fault.py.
"""

import sys
import time

import zsfs.cli
from zsfs.cli import main

DELAY_SECONDS = 1.0
_serve = zsfs.cli._serve
_raise_readahead = zsfs.cli._raise_readahead


def _say(what: str) -> None:
    print(f"slow start: {what} in {DELAY_SECONDS:g} s", file=sys.stderr, flush=True)


def _slow_serve(*args, **kwargs):
    _say("serving")
    time.sleep(DELAY_SECONDS)
    return _serve(*args, **kwargs)


def _slow_raise_readahead(mountpoint):
    _say("readahead")
    time.sleep(DELAY_SECONDS)
    _raise_readahead(mountpoint)


zsfs.cli._serve = _slow_serve
zsfs.cli._raise_readahead = _slow_raise_readahead
sys.exit(main())
