"""Running under systemd: readiness and status on $NOTIFY_SOCKET, and journal logging.

``zsfs@.service`` is ``Type=notify``: systemd considers the unit started only once
zsfs sends ``READY=1``, so units ordered after it find the mount live. zsfs sends it
when the mount has answered a request of its own, a stat(2) of the mount point from
a worker thread once the event loop serves (the mount existing in the kernel is not
enough: until the loop runs, every request would wait). After that, ``STATUS=``
carries the compression ratio and memory every few seconds (``systemctl status``
shows it), and ``STOPPING=1`` goes out when a stop signal arrives.

The protocol is sd_notify(3)'s: one datagram of ``KEY=VALUE`` lines to the
AF_UNIX socket named by $NOTIFY_SOCKET (a leading ``@`` names an abstract socket).
No library is needed for it. Without $NOTIFY_SOCKET nothing is sent.

Logging: systemd connects a service's stderr to the journal and says so in
$JOURNAL_STREAM (``device:inode`` of that stream). The journal stamps every line
itself, so zsfs then writes no timestamp of its own and prefixes each line with
its syslog priority (``<6>`` for INFO), which journald reads as the entry's level.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Callable

import trio

STATUS_INTERVAL = 5.0       # seconds between STATUS= updates
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}
JOURNAL_FORMAT = "%(name)s: %(message)s"


def notify(message: str) -> bool:
    """Send *message* to $NOTIFY_SOCKET; False if there is none or it fails."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(address)
            s.sendall(message.encode())
        return True
    except OSError:
        return False


async def announce(mountpoint: str, status: Callable[[], str],
                   interval: float = STATUS_INTERVAL) -> None:
    """Once the mount answers, send READY=1 and the status; then the status every
    *interval* seconds, until cancelled. Does nothing without $NOTIFY_SOCKET."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return
    # served by this process's own event loop, so it must not run on it
    await trio.to_thread.run_sync(os.stat, mountpoint, abandon_on_cancel=True)
    notify(f"READY=1\nSTATUS={status()}")
    while True:
        await trio.sleep(interval)
        notify(f"STATUS={status()}")


def stopping() -> None:
    notify("STOPPING=1")


def logs_to_journal() -> bool:
    """Whether stderr is the journal stream systemd set up for this service."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = stream.partition(":")
    try:
        st = os.fstat(2)
    except OSError:
        return False
    return f"{st.st_dev}:{st.st_ino}" == f"{device}:{inode}"


class JournalFormatter(logging.Formatter):
    """``<priority>logger: message``: the journal adds time and process itself."""

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6)
        text = super().format(record)
        # every line of a traceback is its own journal entry: prefix each
        return "\n".join(f"<{priority}>{line}" for line in text.split("\n"))


def stderr_handler(fmt: str) -> logging.Handler:
    """A stderr handler: journal format under systemd, *fmt* otherwise."""
    handler = logging.StreamHandler()
    handler.setFormatter(JournalFormatter() if logs_to_journal() else logging.Formatter(fmt))
    return handler


def status_text(ops) -> str:
    """One line for ``systemctl status``: ratio, data, RAM, limit, files."""
    from .ctl import human_size

    orig = ops.store.stats().orig_bytes
    mem = ops.pool.stats().mem_used
    limit = ops.pool.mem_limit
    ratio = orig / mem if mem else 0.0
    of_limit = f" (mem_limit {human_size(limit)})" if limit else ""
    return (f"ratio {ratio:.2f}: {human_size(orig)} of data in {human_size(mem)} of RAM"
            f"{of_limit}, {ops.tree.stats().files} files")
