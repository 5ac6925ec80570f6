"""The zsfs command: check a mount request, mount, then serve until unmounted.

zsfs is started by people (``zsfs MOUNTPOINT -o ...``), by mount(8) through
mount.fuse3 (``zsfs SOURCE MOUNTPOINT -o ...``) and by systemd (``-f``). A
mistake must show as one line and exit status 2 before anything is mounted, and
mount(8) must return only once the filesystem serves, so the daemon forks after
the kernel mount exists and the parent waits for the daemon's word.

Exit status: 0 after a clean unmount (umount(8), ``fusermount3 -u``, SIGTERM,
SIGINT or SIGHUP), and in the parent of a daemon once the daemon serves; 1 if
mounting or serving failed; 2 for bad arguments, options or mount point.

Stop signals are blocked from just before mounting until the event loop listens
for them, so a signal that arrives while the daemon starts is not lost, and does
not kill it with the mount left behind: it unmounts as soon as serving begins.
One the daemon was started with ignored stays ignored, as libfuse's own handlers
leave it (``nohup``'s SIGHUP, the SIGINT of a job a script put in the background).
The requests the daemon sends its own mount (a stat(2), to set the readahead; one
more under systemd, for READY=1) come from threads that are abandoned if the daemon
stops before they are answered: waiting for them would wait for replies the
stopped daemon never sends. A failure of such a side task is logged with its
traceback and the mount serves on.
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import signal
import stat
import sys
from dataclasses import replace
from functools import partial
from importlib.metadata import version
from typing import Awaitable, Callable, NoReturn, Protocol

import pyfuse3
import trio

from . import heap, service
from .options import MountOptions, OptionError, parse_options

log = logging.getLogger(__name__)

#: the stop signals not ignored when the daemon started (read before anything sets one)
_STOP_SIGNALS = tuple(s for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
                      if signal.getsignal(s) is not signal.SIG_IGN)
READAHEAD_KB = 8192
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_SYSLOG_FORMAT = "zsfs[%(process)d]: %(levelname)s %(name)s: %(message)s"


class _Serving(Protocol):
    async def serve(self) -> None: ...


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def _parser() -> _Parser:
    p = _Parser(
        prog="zsfs",
        usage="%(prog)s [SOURCE] MOUNTPOINT [-o OPTIONS] [-f] [-d]",
        description="Mount a zsfs compressed RAM filesystem on MOUNTPOINT.",
    )
    p.add_argument("paths", nargs="+", metavar="MOUNTPOINT",
                   help="the directory to mount on; a SOURCE before it (as from mount(8)) "
                   "names the filesystem")
    p.add_argument("-o", dest="options", action="append", default=[],
                   metavar="OPTIONS", help="comma-separated mount options")
    p.add_argument("-f", "--foreground", action="store_true",
                   help="stay in the foreground, log to stderr")
    p.add_argument("-d", "--debug", action="store_true",
                   help="log debug messages and FUSE requests; implies -f")
    p.add_argument("-V", "--version", action="version", version=f"%(prog)s {version('zsfs')}")
    return p


def _parse(argv: list[str] | None) -> tuple[argparse.Namespace, MountOptions, str]:
    parser = _parser()
    args = parser.parse_intermixed_args(argv)
    if len(args.paths) > 2:
        parser.error(f"unexpected argument {args.paths[2]!r}")
    mountpoint = os.path.abspath(args.paths[-1])
    source = args.paths[0] if len(args.paths) == 2 else "zsfs"
    try:
        opts = parse_options(args.options, source)
    except OptionError as e:
        parser.error(str(e))
    try:
        is_dir = stat.S_ISDIR(os.stat(mountpoint).st_mode)
    except OSError as e:
        parser.error(f"mount point {mountpoint!r}: {e.strerror}")
    if not is_dir:
        parser.error(f"mount point {mountpoint!r} is not a directory")
    if args.debug:
        opts = replace(opts, fuse_options=(*opts.fuse_options, "debug"))
    return args, opts, mountpoint


def _mount(ops: pyfuse3.Operations, mountpoint: str, opts: MountOptions) -> str | None:
    """Mount; on failure return why, with libfuse's own complaint folded in."""
    sys.stderr.flush()
    saved = os.dup(2)
    # a memfd, not a file: mounting /tmp at boot, there may be nowhere to write
    with open(os.memfd_create("libfuse-stderr"), "w+b") as trap:
        os.dup2(trap.fileno(), 2)
        try:
            pyfuse3.init(ops, mountpoint, set(opts.fuse_options))
            return None
        except RuntimeError as e:
            failure = str(e)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        trap.seek(0)
        said = " ".join(trap.read().decode(errors="replace").split())
    return said or failure


def _hold_stop_signals() -> None:
    """Keep stop signals pending until _terminate_on_signal listens for them."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)


def _release_stop_signals() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


async def _terminate_on_signal(
    on_stop: Callable[[], None],
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """End pyfuse3's loop on a stop signal; *on_stop* ends long work under way.

    pyfuse3 stops reading requests and returns once the requests being answered
    are; the pyfuse3.close() after it aborts the connection, so requests still
    queued in the kernel fail with ENOTCONN instead of waiting.
    """
    if not _STOP_SIGNALS:            # every one ignored: only an unmount stops the daemon
        task_status.started()
        return
    with trio.open_signal_receiver(*_STOP_SIGNALS) as signals:
        _release_stop_signals()      # one that came while starting is delivered now
        try:
            task_status.started()
            async for signum in signals:
                log.info("%s received, unmounting", signal.Signals(signum).name)
                service.stopping()
                on_stop()
                pyfuse3.terminate()
        finally:
            # Unmounting from here on: a second signal must not kill the daemon halfway
            # (the receiver's end restores the default actions).
            _hold_stop_signals()


def _raise_readahead(mountpoint: str) -> None:
    """Let the kernel read ahead 8 MiB instead of FUSE's 128 KiB: sequential reads then
    arrive as 1 MiB requests, several in flight at once, which zsfs decompresses on
    worker threads side by side.

    Only once the kernel has the daemon's INIT reply does the setting hold (the reply
    caps it), so this runs in a thread and waits for that with a stat(2) of the mount
    point, a request the daemon must answer: the thread is abandoned if the daemon
    stops first, and the stat then fails when the connection is closed.
    """
    try:
        dev = os.stat(mountpoint).st_dev
        with open(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb", "w") as f:
            f.write(f"{READAHEAD_KB}\n")
    except OSError as e:
        log.info("readahead stays at the kernel's default: %s", e)


async def _logged(what: str, task: Callable[[], Awaitable[object]]) -> None:
    """Run a side task of the daemon: if it fails, say so, and let the mount serve on."""
    try:
        await task()
    except Exception:
        log.exception("%s failed; the mount goes on serving", what)


async def _serve_until_stopped(ops: _Serving, mountpoint: str, ready: Callable[[], None],
                               on_stop: Callable[[], None]) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(_terminate_on_signal, on_stop)
        nursery.start_soon(_logged, "raising the readahead",
                           partial(trio.to_thread.run_sync, _raise_readahead, mountpoint,
                                   abandon_on_cancel=True))
        ready()
        # Type=notify: READY=1 once the mount answers, then STATUS= lines
        nursery.start_soon(_logged, "notifying systemd",
                           partial(service.announce, mountpoint,
                                   lambda: service.status_text(ops)))
        await ops.serve()
        nursery.cancel_scope.cancel()


def _serve(ops: _Serving, mountpoint: str, ready: Callable[[], None],
           on_stop: Callable[[], None] = lambda: None) -> int:
    status = 0
    try:
        trio.run(_serve_until_stopped, ops, mountpoint, ready, on_stop)
    except Exception:
        log.exception("serving %s failed", mountpoint)
        status = 1
    finally:
        pyfuse3.close(unmount=True)
    log.info("unmounted %s", mountpoint)
    return status


def _log_to_syslog() -> None:
    try:
        handler = logging.handlers.SysLogHandler(address="/dev/log")
    except OSError:
        return
    handler.setFormatter(logging.Formatter(_SYSLOG_FORMAT))
    logging.basicConfig(level=logging.INFO, handlers=[handler])


def _daemonize() -> Callable[[], None]:
    """Detach from the caller, which exits 0 once the daemon calls the result.

    The caller exits 1 if the daemon dies before that. Only the daemon returns,
    with its output sent to syslog if there is one.
    """
    read_end, write_end = os.pipe()
    child = os.fork()
    if child:
        _release_stop_signals()      # the caller waits as it always did; the daemon holds them
        os.close(write_end)
        with open(read_end, "rb") as pipe:
            started = pipe.read(1) == b"\0"
        os.waitpid(child, 0)
        os._exit(0 if started else 1)
    os.close(read_end)
    os.setsid()
    if os.fork():
        os._exit(0)
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    _log_to_syslog()

    def ready() -> None:
        os.write(write_end, b"\0")
        os.close(write_end)

    return ready


def main(argv: list[str] | None = None) -> int:
    """Run the zsfs command with *argv* (default: sys.argv[1:]); return the exit status."""
    args, opts, mountpoint = _parse(argv)
    heap.share_one_arena()
    foreground = args.foreground or args.debug
    if foreground:
        level = logging.DEBUG if args.debug else logging.INFO
        # under systemd, the journal's own timestamps and levels instead of ours
        logging.basicConfig(level=level, handlers=[service.stderr_handler(_LOG_FORMAT)])
    # Imported only now, so that usage errors never depend on the filesystem code.
    from .operations import build_operations

    ops = build_operations(opts)
    _hold_stop_signals()
    failure = _mount(ops, mountpoint, opts)
    if failure:
        _release_stop_signals()
        print(f"zsfs: error: cannot mount {mountpoint!r}: {failure}", file=sys.stderr)
        return 1
    ready = (lambda: None) if foreground else _daemonize()
    log.info("mounted on %s", mountpoint)
    return _serve(ops, mountpoint, ready, ops.stop_long_work)
