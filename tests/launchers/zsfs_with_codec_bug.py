"""Test-only launcher: the zsfs command with a bug planted in compression.

The first ``Codec.encode_many`` call made off the trio thread (by a background
compressor) raises RuntimeError, the way a real bug in the codec would; every other
call works. Used by test_fs_fault.py.
"""

import sys
import threading

import zsfs.codec
from zsfs.cli import main

_encode_many = zsfs.codec.Codec.encode_many
_lock = threading.Lock()
_planted = [True]


def _buggy_encode_many(self, chunks):
    if threading.current_thread() is not threading.main_thread():
        with _lock:
            fire = bool(_planted)
            _planted.clear()
        if fire:
            raise RuntimeError("planted codec bug")
    return _encode_many(self, chunks)


zsfs.codec.Codec.encode_many = _buggy_encode_many
sys.exit(main())
