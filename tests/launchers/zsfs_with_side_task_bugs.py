"""Test-only launcher: the zsfs command with bugs planted in its side tasks.

Raising the readahead raises RuntimeError, and so does rendering the systemd status
line; the launcher plays systemd's part by binding a notify socket of its own and
naming it in $NOTIFY_SOCKET, so that the daemon's notification task runs. Requests
are served as usual. Used by test_fs_fault.py.
"""

import os
import socket
import sys
import tempfile

import zsfs.cli
import zsfs.service
from zsfs.cli import main


def _buggy_raise_readahead(mountpoint):
    raise RuntimeError("planted readahead bug")


def _buggy_status_text(ops):
    raise RuntimeError("planted status bug")


notify_socket = os.path.join(tempfile.mkdtemp(prefix="zsfs-notify-"), "notify")
systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)   # kept open while zsfs runs
systemd.bind(notify_socket)
os.environ["NOTIFY_SOCKET"] = notify_socket
zsfs.cli._raise_readahead = _buggy_raise_readahead
zsfs.service.status_text = _buggy_status_text
sys.exit(main())
