"""Shared fixtures for the real-mount zsfs test-suite.

Every filesystem test mounts zsfs through the real command line
(``python -m zsfs MNT -f [-o OPTS]``) on a fresh, empty mount point and
talks to it only through ordinary system calls and shell tools.

Fixtures / helpers exported here:

* ``mount_zsfs``  - factory ``mount(opts="") -> Mount``; every mount is torn
  down with ``fusermount3 -u`` at the end of the test and the daemon must
  then exit with status 0.
* ``mnt``         - ``Path`` of a zsfs mounted with default options.
* ``as_nobody``   - run a Python callable as ``nobody:nogroup`` in a forked
  child; returns its result or re-raises the ``OSError`` it raised.
* ``run_as_nobody`` - run a command (argv list) as ``nobody`` via setpriv.
* ``drop_cache``  - ``drop_cache(path_or_fd)`` evicts the kernel page cache of
  one file so that the next read really reaches the daemon.
"""

from __future__ import annotations

import errno
import gc
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest

NOBODY_UID = 65534
NOGROUP_GID = 65534
MOUNT_TIMEOUT = 10.0
EXIT_TIMEOUT = 15.0
# A test still using a mount after this long is taken to be hung on a request the
# daemon never answers: the FUSE connection is aborted so the test fails (ENOTCONN)
# instead of blocking the whole run.
HANG_TIMEOUT = float(os.environ.get("ZSFS_TEST_HANG_TIMEOUT", "240"))

_MOUNTS_KEY = pytest.StashKey[list]()


# --------------------------------------------------------------------------
# FUSE availability
# --------------------------------------------------------------------------

def fuse_unavailable_reason() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed"
    return None


def skip_or_fail(reason: str) -> None:
    """Skip locally, but fail in CI (CI=true), where everything must be there."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"required in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def require_fuse() -> None:
    """Skip (locally) or fail (in CI) when FUSE cannot be used here."""
    reason = fuse_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"FUSE not usable in CI: {reason}", pytrace=False)
    pytest.skip(f"FUSE not usable: {reason}")


# --------------------------------------------------------------------------
# mount table helpers
# --------------------------------------------------------------------------

def _unescape_mountinfo(s: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 4 <= len(s) and s[i + 1:i + 4].isdigit():
            out.append(chr(int(s[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


@dataclass
class MountEntry:
    mountpoint: str
    fstype: str
    source: str
    mount_options: str
    super_options: str
    device: str = ""      # major:minor; a FUSE mount's minor is its fusectl connection


def mount_entry(path: str | os.PathLike) -> MountEntry | None:
    """The (last) entry of /proc/self/mountinfo for *path*, or None.

    Reading the mount table never touches the FUSE daemon, so this cannot hang
    on a daemon that is not answering yet. Only the parent directory's path is
    resolved: resolving *path* itself would lstat(2) the mount's root, a request.
    """
    path = os.path.abspath(os.fspath(path))
    path = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.rstrip("\n").partition(" - ")
            lf = left.split(" ")
            rf = right.split(" ")
            if len(lf) < 6 or len(rf) < 3:
                continue
            mp = _unescape_mountinfo(lf[4])
            if mp == path:
                found = MountEntry(mp, rf[0], _unescape_mountinfo(rf[1]), lf[5], rf[2], lf[2])
    return found


def is_mounted(path) -> bool:
    e = mount_entry(path)
    return e is not None and e.fstype.startswith("fuse")


# --------------------------------------------------------------------------
# Mount object / factory
# --------------------------------------------------------------------------

def _mount_parent() -> Path:
    """A world-traversable directory for mount points.

    pytest's own basetemp lives below /tmp/pytest-of-root (mode 0700), which
    user nobody cannot traverse, so permission tests could never reach a mount
    placed there.
    """
    d = Path(tempfile.mkdtemp(prefix="zsfs-test-mnt-"))
    d.chmod(0o755)
    return d


@dataclass
class Mount:
    path: Path
    opts: str
    proc: subprocess.Popen | None
    log: Path
    argv: list[str] = field(default_factory=list)
    conn: int | None = None  # /sys/fs/fuse/connections/<conn>
    watchdog: threading.Timer | None = None
    hung: bool = False

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stderr(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def rss_bytes(self) -> int:
        """Resident set size of the daemon process, in bytes."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("VmRSS not found")

    def __fspath__(self) -> str:
        return str(self.path)

    def __truediv__(self, other) -> Path:
        return self.path / other


def zsfs_argv(mountpoint, opts: str = "", foreground: bool = True,
              command: tuple[str, ...] = ()) -> list[str]:
    """The zsfs command line; *command* replaces ``python -m zsfs`` (test launchers)."""
    argv = list(command or (sys.executable, "-m", "zsfs")) + [str(mountpoint)]
    if foreground:
        argv.append("-f")
    if opts:
        argv += ["-o", opts]
    return argv


def _try_unmount(path: Path) -> bool:
    for attempt in range(5):
        if not is_mounted(path):
            return True
        gc.collect()
        r = subprocess.run(["fusermount3", "-u", str(path)],
                           capture_output=True, text=True)
        if r.returncode == 0 or not is_mounted(path):
            return True
        time.sleep(0.2 * (attempt + 1))
    subprocess.run(["umount", "-l", str(path)], capture_output=True)
    return not is_mounted(path)


def _abort_connection(conn: int | None) -> bool:
    """Abort a FUSE connection through fusectl (if mounted); True on success."""
    if conn is None:
        return False
    try:
        with open(f"/sys/fs/fuse/connections/{conn}/abort", "w") as f:
            f.write("1")
        return True
    except OSError:
        return False


def _finish(m: Mount) -> list[str]:
    """Unmount *m* and reap its daemon; returns a list of problems."""
    problems = []
    if m.watchdog is not None:
        m.watchdog.cancel()
    if m.hung:
        problems.append(f"still in use after {HANG_TIMEOUT:.0f} s: the FUSE connection "
                        "was aborted (a request never answered?)")
    if not _try_unmount(m.path):
        problems.append(f"could not unmount {m.path}")
    if m.proc is not None:
        try:
            rc = m.proc.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            if not _abort_connection(m.conn):
                m.proc.kill()
            try:
                rc = m.proc.wait(timeout=5)
                problems.append("daemon did not exit after unmount until the "
                                "FUSE connection was aborted")
            except subprocess.TimeoutExpired:
                m.proc.kill()
                m.proc.wait()
                rc = None
                problems.append("daemon did not exit after unmount; killed")
        if rc is not None and rc != 0:
            problems.append(f"daemon exit status {rc} (expected 0)")
    if problems:
        sys.stderr.write(f"\n---- zsfs daemon stderr ({m.path}) ----\n{m.stderr()}\n")
    return problems


def start_mount(mountpoint: Path, opts: str, log: Path, extra_argv=(), command=()) -> Mount:
    """Start ``python -m zsfs MNT -f [-o opts]`` and wait until it is mounted."""
    require_fuse()
    argv = zsfs_argv(mountpoint, opts, command=command) + list(extra_argv)
    logf = open(log, "wb")
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf,
                                stderr=subprocess.STDOUT)
    finally:
        logf.close()
    m = Mount(path=mountpoint, opts=opts, proc=proc, log=log, argv=argv)
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while True:
        if is_mounted(mountpoint):
            break
        if proc.poll() is not None:
            pytest.fail(f"zsfs exited with status {proc.returncode} before the "
                        f"mount came up; argv={argv}\n---- stderr ----\n{m.stderr()}",
                        pytrace=False)
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            _try_unmount(mountpoint)
            pytest.fail(f"zsfs did not mount within {MOUNT_TIMEOUT}s; argv={argv}"
                        f"\n---- stderr ----\n{m.stderr()}", pytrace=False)
        time.sleep(0.02)
    # The connection, from the mount table: a stat would already be a request.
    entry = mount_entry(mountpoint)
    major, _, minor = entry.device.partition(":") if entry else ("", "", "")
    m.conn = int(minor) if major == "0" and minor.isdigit() else None

    def on_hang():
        m.hung = True
        if not _abort_connection(m.conn):
            proc.kill()  # closing /dev/fuse aborts the connection just the same

    # A daemon that never answers its first request must fail this test, not hang the run.
    first = threading.Timer(MOUNT_TIMEOUT + EXIT_TIMEOUT, on_hang)
    first.daemon = True
    first.start()
    try:
        os.stat(mountpoint)  # first real request: the daemon must answer it
    except OSError as e:
        proc.kill()
        proc.wait()
        _try_unmount(mountpoint)
        pytest.fail(f"stat of the fresh zsfs mount failed: {e}\n---- stderr ----\n"
                    f"{m.stderr()}", pytrace=False)
    finally:
        first.cancel()
    m.watchdog = threading.Timer(HANG_TIMEOUT, on_hang)
    m.watchdog.daemon = True
    m.watchdog.start()
    return m


@pytest.fixture
def mount_zsfs(request, tmp_path_factory):
    """Factory: ``mount(opts: str = "") -> Mount`` (fresh, empty mount)."""
    require_fuse()
    mounts: list[Mount] = []
    request.node.stash[_MOUNTS_KEY] = mounts
    parent = _mount_parent()
    logdir = tmp_path_factory.mktemp("zsfs-log")

    def mount(opts: str = "", extra_argv=(), command=()) -> Mount:
        mp = parent / f"m{len(mounts)}"
        mp.mkdir()
        m = start_mount(mp, opts, logdir / f"daemon{len(mounts)}.log", extra_argv, command)
        mounts.append(m)
        return m

    yield mount

    problems = []
    for m in reversed(mounts):
        problems += [f"{m.path}: {p}" for p in _finish(m)]
    if not problems:
        shutil.rmtree(parent, ignore_errors=True)
    if problems:
        pytest.fail("zsfs teardown problems:\n" + "\n".join(problems), pytrace=False)


@pytest.fixture
def mnt(mount_zsfs) -> Path:
    """A fresh zsfs mounted with default options."""
    return mount_zsfs().path


@pytest.fixture
def mnt_other(mount_zsfs) -> Path:
    """A fresh zsfs mounted with allow_other (for permission tests)."""
    return mount_zsfs("allow_other").path


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed:
        for m in item.stash.get(_MOUNTS_KEY, []):
            rep.sections.append((f"zsfs daemon output {m.path} ({' '.join(m.argv[3:])})",
                                 m.stderr()[-20000:] or "<empty>"))


# --------------------------------------------------------------------------
# running things as user nobody
# --------------------------------------------------------------------------

class NobodyError(Exception):
    """A non-OSError exception raised by the callable run as nobody."""


def _as_nobody(func, *args, **kwargs):
    r, w = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() + threads
        pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(NOGROUP_GID)
            os.setuid(NOBODY_UID)
            try:
                res = ("ok", func(*args, **kwargs))
            except OSError as e:
                res = ("oserror", e.errno, e.strerror, e.filename)
            except BaseException as e:  # noqa: BLE001
                res = ("exc", repr(e))
            try:
                data = pickle.dumps(res)
            except Exception as e:  # noqa: BLE001
                data = pickle.dumps(("exc", f"unpicklable result: {e!r}"))
            view = memoryview(data)
            while view:
                n = os.write(w, view)
                view = view[n:]
            os.close(w)
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    with os.fdopen(r, "rb") as f:
        while True:
            b = f.read(65536)
            if not b:
                break
            chunks.append(b)
    _, status = os.waitpid(pid, 0)
    if not chunks:
        raise NobodyError(f"child died without a result (status {status})")
    res = pickle.loads(b"".join(chunks))
    if res[0] == "ok":
        return res[1]
    if res[0] == "oserror":
        raise OSError(res[1], res[2], res[3])
    raise NobodyError(res[1])


@pytest.fixture
def as_nobody():
    """``as_nobody(func, *args)`` runs func as nobody:nogroup in a forked child."""
    return _as_nobody


def _run_as_nobody(argv, **kw):
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("cwd", "/")
    return subprocess.run(["setpriv", f"--reuid={NOBODY_UID}", f"--regid={NOGROUP_GID}",
                           "--clear-groups", "--"] + list(argv), **kw)


@pytest.fixture
def run_as_nobody():
    """``run_as_nobody(argv, **subprocess_kw)`` -> CompletedProcess, via setpriv."""
    return _run_as_nobody


# --------------------------------------------------------------------------
# misc helpers
# --------------------------------------------------------------------------

def drop_cache(target) -> None:
    """Evict clean page-cache pages of one file (path or fd).

    Makes the next read of that file go to the daemon instead of being served
    from the kernel's cache (no-op on tmpfs, whose page cache *is* the data).
    """
    if isinstance(target, int):
        os.fsync(target)
        os.posix_fadvise(target, 0, 0, os.POSIX_FADV_DONTNEED)
        return
    fd = os.open(target, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@pytest.fixture
def dropcache():
    return drop_cache


def read_file(path, uncached: bool = True) -> bytes:
    if uncached:
        drop_cache(path)
    with open(path, "rb") as f:
        return f.read()


def wait_for(pred, timeout: float = 3.0, interval: float = 0.02):
    """Poll pred() until truthy or timeout; returns the last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(interval)


CONTROL_NAME = ".zsfs"  # zsfs's control directory, present in every mount root


def root_entries(mnt) -> list[str]:
    """Sorted listing of a mount root without zsfs's own control directory."""
    return sorted(n for n in os.listdir(mnt) if n != CONTROL_NAME)


def subdir_count(path) -> int:
    """Number of subdirectories listed in *path* (what st_nlink - 2 must be)."""
    with os.scandir(path) as it:
        return sum(1 for e in it if e.is_dir(follow_symlinks=False))


def errno_of(func, *args, **kwargs):
    """Call func; return the errno of the OSError it raised, or None."""
    try:
        func(*args, **kwargs)
    except OSError as e:
        return e.errno
    return None


def errname(e) -> str:
    return "success" if e is None else errno.errorcode.get(e, str(e))


def expect_errno(expected, func, *args, **kwargs):
    """Assert func(*args) fails with errno in *expected* (int or tuple)."""
    exp = expected if isinstance(expected, tuple) else (expected,)
    got = errno_of(func, *args, **kwargs)
    assert got in exp, (f"{getattr(func, '__name__', func)}{args!r}: expected "
                        f"{'/'.join(errname(e) for e in exp)}, got {errname(got)}")


def _ignore(signum, frame) -> None:
    pass


def pytest_configure(config):
    # Started from a script's background job or nohup, pytest inherits SIGINT or SIGHUP
    # ignored, and so would every daemon and zsfsctl the tests start and then signal as a
    # user at a terminal would. A handler of our own keeps them ignored here, and exec(2)
    # resets it, so children start with the default actions.
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        if signal.getsignal(signum) is signal.SIG_IGN:
            signal.signal(signum, _ignore)
    config.addinivalue_line("markers", "zsfs_only: checks a zsfs-specific promise "
                            "(compression accounting, CLI, daemon) not shared by tmpfs")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
