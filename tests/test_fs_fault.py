"""A bug in a request handler costs that request an EIO, never the mount."""

import errno
import os
import sys
from pathlib import Path

import pytest

LAUNCHER = Path(__file__).parent / "launchers" / "zsfs_with_handler_bug.py"


def test_mount_survives_a_handler_bug(mount_zsfs):
    m = mount_zsfs(command=(sys.executable, str(LAUNCHER)))
    f = m / "file"
    f.write_bytes(b"before")
    os.setxattr(f, "user.ok", b"1")
    for _ in range(3):
        with pytest.raises(OSError) as e:
            os.getxattr(f, "user.zsfs-test-bug")
        assert e.value.errno == errno.EIO
    # the mount goes on serving, reads and writes included
    assert os.getxattr(f, "user.ok") == b"1"
    assert f.read_bytes() == b"before"
    (m / "after").write_bytes(b"after")
    assert sorted(os.listdir(m.path)) == [".zsfs", "after", "file"]
    assert "planted handler bug" in m.stderr() and "Traceback" in m.stderr()
