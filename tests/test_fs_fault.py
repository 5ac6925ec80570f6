"""Faults on real mounts: bugs, stop signals, lazy unmounts, the arena's end.

* A bug in a request handler costs that request an EIO, never the mount; a bug in a
  background task (the compactor, a compressor, a side task of the daemon) is logged
  with its traceback, and the mount goes on serving with its data intact.
* SIGTERM and SIGINT unmount cleanly and the daemon exits 0 whatever it is doing:
  starting, streaming several writers' data, compacting a fragmented pool. Writers
  get an error (ENOTCONN, or ECONNABORTED for a request the abort caught queued),
  never a hang.
* ``umount -l`` with files open: as with libfuse, the daemon goes on serving the
  open files and exits 0 once the last reference is gone.
* The arena's end, with ``size=0`` and no ``mem_limit``: ENOSPC, every byte accepted
  before reads back, and the mount serves on.

Faults are planted, and the arena is capped, through test-only launchers
(``tests/launchers/``), which run the real zsfs command with one thing changed.
Timeouts here only detect hangs.
"""

from __future__ import annotations

import errno
import os
import random
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

try:
    from conftest import (MOUNT_TIMEOUT, _try_unmount, is_mounted, read_file,
                          require_fuse, wait_for, zsfs_argv)
except ImportError:  # tests/ imported as a package
    from tests.conftest import (MOUNT_TIMEOUT, _try_unmount, is_mounted, read_file,
                                require_fuse, wait_for, zsfs_argv)

LAUNCHERS = Path(__file__).parent / "launchers"
HANG = 60.0                 # seconds after which something is taken to hang
KiB, MiB = 1 << 10, 1 << 20
STOP_SIGNALS = pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT],
                                       ids=["SIGTERM", "SIGINT"])
ABORTED = ("ENOTCONN", "ECONNABORTED")   # what a request to an aborted connection gets


def launcher(name: str, *args: str) -> tuple[str, ...]:
    """The command of tests/launchers/zsfs_with_<name>.py (zsfs with one thing changed)."""
    return (sys.executable, str(LAUNCHERS / f"zsfs_with_{name}.py"), *args)


def stats(mnt) -> dict[str, float]:
    with open(Path(mnt) / ".zsfs" / "stats") as f:
        return {name: float(value) for name, value in
                (line.split(":", 1) for line in f.read().splitlines())}


def text_data(n: int, seed: int) -> bytes:
    """Compressible, never same-filled, deterministic bytes."""
    rng = random.Random(seed)
    words = [b"alpha", b"beta", b"gamma", b"delta", b"zsfs", b"chunk", b"page", b"\n"]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words) + b" %d " % rng.randrange(100000)
    return bytes(out[:n])


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def fragmented_file(path: Path, size: int, chunk_size: int, seed: int = 1) -> bytes:
    """Write *size* compressible bytes, then zeros over every other chunk: the zeroed
    chunks become fill entries and their objects are freed, leaving zspages half
    empty. Returns the file's content."""
    data = bytearray(text_data(size, seed))
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_all(fd, data)
        os.fsync(fd)
        zeros = bytes(chunk_size)
        for off in range(0, size, 2 * chunk_size):
            assert os.pwrite(fd, zeros, off) == chunk_size
            data[off:off + chunk_size] = zeros
        os.fsync(fd)     # every chunk stored: the pool's counters are final
    finally:
        os.close(fd)
    return bytes(data)


# --------------------------------------------------------------------------
# writers in child processes: a writer stuck in write(2) must not stick the test
# --------------------------------------------------------------------------

_WRITER = r"""
import errno, os, sys
path, fsync_each = sys.argv[1], sys.argv[2] == "fsync"
block = (os.urandom(256 << 10) + b"zsfs streamed text %s " % path.encode() * 65536)[:1 << 20]
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
total, going = 0, False
try:
    while total < 1 << 30:
        total += os.write(fd, block)
        if fsync_each:
            os.fsync(fd)
        if not going and total >= 4 << 20:
            going = True
            print("going", flush=True)
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)), flush=True)
    sys.exit(0)
print("finished without an error", flush=True)
"""


def start_writer(path: Path, fsync_each: bool = False) -> subprocess.Popen:
    """A child streaming 1 MiB writes (a quarter random, the rest text) into *path*
    until a write fails; it prints ``going`` after 4 MiB, then the failure's errno name."""
    return subprocess.Popen([sys.executable, "-c", _WRITER, str(path),
                             "fsync" if fsync_each else "-"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def read_line(proc: subprocess.Popen, timeout: float = HANG) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no word from child {proc.args[-2:]} in {timeout:.0f} s"
    return proc.stdout.readline().strip()


def outcome(proc: subprocess.Popen) -> str:
    """The last line a writer printed once it has exited (the hang detector kills it)."""
    try:
        out, err = proc.communicate(timeout=HANG)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return f"still writing {HANG:.0f} s after the signal (hung)"
    lines = out.split()
    return lines[-1] if lines else f"exit {proc.returncode}: {err.strip()[-300:]}"


def kill_all(procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.communicate()


def daemon_exit(m, what: str) -> int:
    try:
        return m.proc.wait(timeout=HANG)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the daemon did not exit within {HANG:.0f} s of {what}")


# --------------------------------------------------------------------------
# bugs
# --------------------------------------------------------------------------

def test_mount_survives_a_handler_bug(mount_zsfs):
    m = mount_zsfs(command=launcher("handler_bug"))
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


def test_background_compaction_bug_is_logged_and_the_mount_goes_on(mount_zsfs):
    """The background compactor's first compaction raises after one slice: logged with
    its traceback; the next check compacts, and no byte is lost."""
    m = mount_zsfs("compact_interval=0.2", command=launcher("compactor_bug"))
    content = fragmented_file(m / "frag", 8 * MiB, chunk_size=16 * KiB)
    assert wait_for(lambda: "planted compactor bug" in m.stderr(), timeout=HANG), \
        f"the background compactor never ran; stats: {stats(m)}"
    # still mounted and serving, and the background task goes on: later runs compact
    # (until fewer pages are freeable than it bothers with)
    s = wait_for(lambda: (lambda st: st if st["compactions_background"] >= 1
                          and st["freeable_pages"] < 64 else None)(stats(m)), timeout=HANG)
    assert s, f"no background compaction after the failed one; stats: {stats(m)}"
    assert s["pages_compacted"] > 0, s
    err = m.stderr()
    assert "background compaction failed" in err and "Traceback" in err
    assert err.count("RuntimeError: planted compactor bug") == 1   # raised once, logged once
    assert read_file(m / "frag") == content
    more = text_data(3 * MiB, seed=2)
    (m / "more").write_bytes(more)
    assert read_file(m / "more") == more and read_file(m / "frag") == content
    assert m.proc.poll() is None


def test_compressor_bug_is_logged_and_the_data_stored(mount_zsfs):
    """A background compressor's batch raises (once): logged with its traceback; the
    batch is compressed again and stored, and the mount serves on."""
    m = mount_zsfs(command=launcher("codec_bug"))
    data = text_data(2 * MiB, seed=3)
    fd = os.open(m / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        write_all(fd, data)     # staged; no fsync: the background compressors take it
    finally:
        os.close(fd)
    assert wait_for(lambda: "planted codec bug" in m.stderr(), timeout=HANG), \
        f"no compressor ran into the planted bug; stats: {stats(m)}"
    s = wait_for(lambda: (lambda st: st if st["staged_data_size"] == 0 else None)(stats(m)),
                 timeout=HANG)
    assert s, f"the staged data was never stored after the failure: {stats(m)}"
    assert "Traceback" in m.stderr()
    assert m.proc.poll() is None
    assert s["orig_data_size"] == len(data)
    assert 0 < s["compr_data_size"] < len(data) / 2     # stored compressed, in the pool
    assert read_file(m / "f") == data
    more = text_data(MiB, seed=4)
    (m / "g").write_bytes(more)
    fd = os.open(m / "g", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    assert read_file(m / "g") == more and read_file(m / "f") == data
    assert m.stderr().count("RuntimeError: planted codec bug") == 1


def test_side_task_bugs_are_logged_and_the_mount_goes_on(mount_zsfs):
    """The daemon's side tasks (raising the readahead, notifying systemd) raise: each
    failure is logged with its traceback, and the mount serves on."""
    m = mount_zsfs(command=launcher("side_task_bugs"))
    data = text_data(MiB, seed=7)
    (m / "f").write_bytes(data)
    assert wait_for(lambda: "planted readahead bug" in m.stderr()
                    and "planted status bug" in m.stderr(), timeout=HANG), m.stderr()
    assert m.proc.poll() is None
    assert read_file(m / "f") == data
    (m / "g").write_bytes(b"after")
    assert (m / "g").read_bytes() == b"after"
    err = m.stderr()
    assert "raising the readahead failed" in err and "notifying systemd failed" in err
    assert err.count("Traceback") == 2


# --------------------------------------------------------------------------
# stop signals
# --------------------------------------------------------------------------

@pytest.mark.zsfs_only
@STOP_SIGNALS
def test_stop_signal_during_heavy_writes(mount_zsfs, sig):
    m = mount_zsfs()
    writers = [start_writer(m / f"w{i}", fsync_each=i == 0) for i in range(4)]
    try:
        for w in writers:
            assert read_line(w) == "going"
        os.kill(m.pid, sig)
        rc = daemon_exit(m, sig.name)
        outcomes = [outcome(w) for w in writers]
    finally:
        kill_all(writers)
    assert rc == 0, f"exit status {rc} after {sig.name}"
    assert not is_mounted(m.path)
    assert all(o in ABORTED for o in outcomes), outcomes
    assert f"{sig.name} received, unmounting" in m.stderr()
    assert "Traceback" not in m.stderr()


@pytest.mark.zsfs_only
@STOP_SIGNALS
def test_stop_signal_during_compaction(mount_zsfs, sig):
    """``echo 1 > .zsfs/compact`` of a fragmented pool is under way (slices made slow,
    as a large pool's compaction is long) and two writers stream: the compaction stops
    at its next slice and the daemon unmounts cleanly."""
    m = mount_zsfs("chunk_size=4k,compact_threshold=0", command=launcher("slow_compaction"))
    fragmented_file(m / "frag", 8 * MiB, chunk_size=4 * KiB)
    assert stats(m)["freeable_pages"] >= 100
    writers = [start_writer(m / f"w{i}") for i in range(2)]
    compact = None
    try:
        for w in writers:
            assert read_line(w) == "going"
        compact = subprocess.Popen(["bash", "-c", f"echo 1 > {m.path}/.zsfs/compact"],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        assert wait_for(lambda: stats(m)["pages_compacted"] > 0, timeout=HANG)
        assert compact.poll() is None, "the compaction ended before the signal"
        os.kill(m.pid, sig)
        rc = daemon_exit(m, sig.name)
        outcomes = [outcome(w) for w in writers]
        try:
            _, compact_err = compact.communicate(timeout=HANG)
        except subprocess.TimeoutExpired:
            pytest.fail(f"echo 1 > .zsfs/compact still waits {HANG:.0f} s after {sig.name}")
    finally:
        kill_all(writers + ([compact] if compact else []))
    assert rc == 0, f"exit status {rc} after {sig.name}"
    assert not is_mounted(m.path)
    assert all(o in ABORTED for o in outcomes), outcomes
    # the compaction request is answered (stopped early) or fails with the connection
    assert compact.returncode == 0 or re.search(
        "Transport endpoint is not connected|Software caused connection abort",
        compact_err), compact_err
    err = m.stderr()
    assert f"{sig.name} received, unmounting" in err
    assert re.search(r"compaction stopped after freeing \d+ pages: unmounting", err), err
    assert "Traceback" not in err


def _start_and_signal(command, mountpoint: Path, log: Path, sig, delay: float = 0.0,
                      marker: str | None = None, ignored: tuple[int, ...] = ()) -> int:
    """Start zsfs with the *ignored* signals ignored, and send it *sig* (one signal or
    several in a row) *delay* seconds after the mount appears in the mount table (the
    daemon may not be serving yet), or once *marker* is in its log.
    Returns its exit status; cleans up whatever it leaves.

    Nothing here sends the mount a request before the signal: a stat(2) would put
    the root's attributes in the kernel's cache, and the daemon's own stat of its
    mount point would then never reach it.
    """
    require_fuse()
    with open(log, "wb") as out:
        proc = subprocess.Popen(zsfs_argv(mountpoint, command=command),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=lambda: [signal.signal(s, signal.SIG_IGN)
                                                    for s in ignored])
    try:
        assert wait_for(lambda: is_mounted(mountpoint) or proc.poll() is not None,
                        timeout=MOUNT_TIMEOUT, interval=0.001)
        if marker is not None:
            wait_for(lambda: marker in log.read_text() or proc.poll() is not None,
                     timeout=MOUNT_TIMEOUT, interval=0.001)
            assert marker in log.read_text(), log.read_text()
        assert proc.poll() is None, f"zsfs exited early:\n{log.read_text()}"
        time.sleep(delay)
        sent = sig if isinstance(sig, tuple) else (sig,)
        for s in sent:
            proc.send_signal(s)
        try:
            return proc.wait(timeout=HANG)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the daemon did not exit within {HANG:.0f} s of "
                        f"{'+'.join(s.name for s in sent)}:\n{log.read_text()}")
    finally:
        if proc.poll() is None:
            proc.kill()        # closing /dev/fuse aborts the connection: nothing waits
            proc.wait()
        if is_mounted(mountpoint):
            _try_unmount(mountpoint)


@pytest.mark.zsfs_only
@STOP_SIGNALS
@pytest.mark.parametrize("step", ["serving", "readahead"])
def test_stop_signal_while_starting(tmp_path, sig, step):
    """A launcher makes two steps of starting a second slow: from mounting to serving,
    and the readahead thread's stat(2) of the mount point. A signal before serving is
    not lost, nor fatal; one while that stat is yet to come does not leave the daemon
    waiting for an answer from itself."""
    mp = tmp_path / "mnt"
    mp.mkdir()
    log = tmp_path / "daemon.log"
    rc = _start_and_signal(launcher("slow_start"), mp, log, sig,
                           marker=f"slow start: {step} in")
    assert rc == 0, f"exit status {rc} after {sig.name}:\n{log.read_text()}"
    assert not is_mounted(mp), "the mount was left behind"
    assert f"{sig.name} received, unmounting" in log.read_text()
    assert "Traceback" not in log.read_text()


@pytest.mark.zsfs_only
@pytest.mark.parametrize("step", ["serving", "readahead"])
def test_stop_signal_ignored_at_start_stays_ignored(tmp_path, step):
    """Started with SIGINT ignored (a job a script put in the background), zsfs ignores
    it, while starting and while serving, as libfuse's own handlers do; SIGTERM, sent
    right after it, stops it. (Pending together, SIGINT is delivered first.)"""
    mp = tmp_path / "mnt"
    mp.mkdir()
    log = tmp_path / "daemon.log"
    rc = _start_and_signal(launcher("slow_start"), mp, log, (signal.SIGINT, signal.SIGTERM),
                           marker=f"slow start: {step} in", ignored=(signal.SIGINT,))
    assert rc == 0, f"exit status {rc}:\n{log.read_text()}"
    assert not is_mounted(mp), "the mount was left behind"
    said = log.read_text()
    assert "SIGTERM received, unmounting" in said and "SIGINT" not in said, said


@pytest.mark.zsfs_only
def test_with_every_stop_signal_ignored_only_an_unmount_stops_it(tmp_path):
    require_fuse()
    mp = tmp_path / "mnt"
    mp.mkdir()
    log = tmp_path / "daemon.log"
    signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    with open(log, "wb") as out:
        proc = subprocess.Popen(zsfs_argv(mp), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT,
                                preexec_fn=lambda: [signal.signal(s, signal.SIG_IGN)
                                                    for s in signals])
    try:
        assert wait_for(lambda: is_mounted(mp) or proc.poll() is not None,
                        timeout=MOUNT_TIMEOUT, interval=0.01), log.read_text()
        for s in signals:
            proc.send_signal(s)
        time.sleep(0.5)                      # time for a handler, were there one
        assert is_mounted(mp) and os.path.isdir(mp / ".zsfs"), log.read_text()
        assert _try_unmount(mp)
        assert proc.wait(timeout=HANG) == 0, log.read_text()
        assert "received" not in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if is_mounted(mp):
            _try_unmount(mp)


@pytest.mark.zsfs_only
def test_stop_signal_at_random_moments_of_startup(tmp_path):
    rng = random.Random(5)
    for i in range(10):
        sig = rng.choice([signal.SIGTERM, signal.SIGINT])
        delay = rng.uniform(0, 0.05)
        mp = tmp_path / f"mnt{i}"
        mp.mkdir()
        log = tmp_path / f"daemon{i}.log"
        rc = _start_and_signal((), mp, log, sig, delay)
        assert rc == 0, f"exit status {rc} after {sig.name} at {delay * 1000:.0f} ms:\n" \
            f"{log.read_text()}"
        assert not is_mounted(mp)
        assert "Traceback" not in log.read_text()


# --------------------------------------------------------------------------
# lazy unmount
# --------------------------------------------------------------------------

@pytest.mark.zsfs_only
def test_lazy_unmount_serves_open_files_until_the_last_closes(mount_zsfs):
    """As with libfuse: ``umount -l`` takes the mount out of the namespace at once; the
    daemon serves what is still open, and exits 0 when the last reference goes."""
    m = mount_zsfs()
    fd = os.open(m / "open", os.O_RDWR | os.O_CREAT, 0o644)
    holder = None
    try:
        os.write(fd, b"before ")
        (m / "d").mkdir()
        holder = subprocess.Popen(["sleep", "600"], cwd=m / "d")    # a cwd in the mount
        r = subprocess.run(["umount", "-l", str(m.path)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert not is_mounted(m.path)
        assert os.listdir(m.path) == []             # the bare mount point is back
        # the daemon still serves the open file and the holder's directory
        os.write(fd, b"after")
        os.fsync(fd)
        assert os.pread(fd, 100, 0) == b"before after"
        assert sorted(os.listdir(f"/proc/{holder.pid}/cwd/..")) == [".zsfs", "d", "open"]
        os.close(fd)
        fd = -1
        assert m.proc.poll() is None, "the daemon exited while a cwd was in the mount"
        assert (Path(f"/proc/{holder.pid}/cwd/..") / "open").read_bytes() == b"before after"
        holder.kill()
        holder.wait()
        holder = None
        assert daemon_exit(m, "the last reference going") == 0
    finally:
        if fd >= 0:
            os.close(fd)
        if holder is not None:
            holder.kill()
            holder.wait()
    assert "Traceback" not in m.stderr()


@pytest.mark.zsfs_only
def test_lazy_unmount_of_an_idle_mount_exits_at_once(mount_zsfs):
    m = mount_zsfs()
    (m / "f").write_bytes(b"x")
    r = subprocess.run(["umount", "-l", str(m.path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert daemon_exit(m, "umount -l") == 0
    assert not is_mounted(m.path)


# --------------------------------------------------------------------------
# the arena's end
# --------------------------------------------------------------------------

ARENA = 24 * MiB + 40 * KiB          # not a whole number of 16 KiB objects


@pytest.mark.zsfs_only
def test_arena_end_enospc_keeps_data_and_serves_on(mount_zsfs):
    """size=0 and no mem_limit, with the arena capped at 24 MiB by a launcher (it is
    otherwise as large as RAM): incompressible writes of odd sizes end in ENOSPC, every
    byte accepted reads back, failed overwrites change nothing, and freeing room
    lets writes succeed again."""
    m = mount_zsfs("size=0", command=launcher("small_arena", f"--arena-bytes={ARENA}"))
    rng = random.Random(6)
    files: dict[Path, bytearray] = {}
    full = False
    while not full:
        assert len(files) < 100, "never ENOSPC: is the arena capped?"
        path = m / f"f{len(files):02d}"
        content = files[path] = bytearray()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            while len(content) < MiB:
                block = os.urandom(rng.randint(1, 200 * KiB))
                try:
                    n = os.write(fd, block)
                except OSError as e:
                    assert e.errno == errno.ENOSPC, e
                    full = True
                    break
                content += block[:n]
        finally:
            os.close(fd)
    # Top up with whole chunks until not even one more fits: then fewer pages are left
    # than a raw chunk's zspage takes (4; the odd sizes above may have left more).
    path = m / "top-up"
    content = files[path] = bytearray()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            block = os.urandom(16 * KiB)
            try:
                assert os.write(fd, block) == len(block)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
                break
            content += block
    finally:
        os.close(fd)
    s = stats(m)
    assert s["mem_limit"] == 0 and s["mem_reserved"] == 0 and s["staged_data_size"] == 0, s
    assert ARENA - 4 * 4096 < s["mem_used_total"] <= ARENA, s
    assert s["orig_data_size"] == sum(map(len, files.values()))
    assert s["compr_data_size"] == pytest.approx(s["orig_data_size"], rel=0.01)  # raw
    # overwriting needs a new object before the old one is freed: ENOSPC, no change
    first = next(iter(files))
    fd = os.open(first, os.O_WRONLY)
    try:
        with pytest.raises(OSError) as e:
            os.pwrite(fd, os.urandom(4 * KiB), 10 * KiB)
        assert e.value.errno == errno.ENOSPC
    finally:
        os.close(fd)
    for path, content in files.items():
        assert read_file(path) == content, f"{path.name} changed"
    assert os.statvfs(m.path).f_bsize == 4096       # still answering
    assert m.proc.poll() is None
    # free a file's room: writes succeed again
    before = stats(m)["orig_data_size"]
    os.unlink(first)
    freed = files.pop(first)
    assert wait_for(lambda: stats(m)["orig_data_size"] == before - len(freed))
    again = os.urandom(len(freed) // 2)
    (m / "again").write_bytes(again)
    assert read_file(m / "again") == again
    for path, content in files.items():
        assert read_file(path) == content, f"{path.name} changed"
    assert "Traceback" not in m.stderr()
