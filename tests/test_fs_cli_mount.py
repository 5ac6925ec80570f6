"""Mount-level behaviour of zsfs: options as seen from a mounted filesystem,
daemon life cycle (foreground, detached, signals, fusermount3 -u)."""

from __future__ import annotations

import errno
import json
import os
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

try:
    from conftest import (drop_cache, expect_errno, is_mounted, mount_entry, read_file,
                          require_fuse, root_entries, skip_or_fail, subdir_count, wait_for,
                          zsfs_argv)
except ImportError:  # tests/ imported as a package
    from tests.conftest import (drop_cache, expect_errno, is_mounted, mount_entry, read_file,
                                require_fuse, root_entries, skip_or_fail, subdir_count,
                                wait_for, zsfs_argv)

KiB, MiB, GiB = 1024, 1024**2, 1024**3
NOBODY, NOGROUP = 65534, 65534


def _stat_as_nobody(path):
    return os.stat(path)


def _read(path):
    with open(path, "rb") as fh:
        return fh.read()


# =============================================================================
# mount table, fsname, root directory
# =============================================================================

@pytest.mark.zsfs_only
def test_mount_type_is_fuse_zsfs(mount_zsfs):
    m = mount_zsfs()
    e = mount_entry(m.path)
    assert e is not None and e.fstype == "fuse.zsfs", e
    out = subprocess.run(["mount"], capture_output=True, text=True, check=True).stdout
    line = [ln for ln in out.splitlines() if f" on {m.path} " in ln]
    assert line and "type fuse.zsfs" in line[-1], line
    r = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", str(m.path)], capture_output=True,
                       text=True)
    if r.returncode == 0:
        assert r.stdout.strip() == "fuse.zsfs"


@pytest.mark.zsfs_only
def test_fsname_option(mount_zsfs):
    m = mount_zsfs("fsname=my-zsfs-pool")
    e = mount_entry(m.path)
    assert e.source == "my-zsfs-pool", e
    r = subprocess.run(["df", str(m.path)], capture_output=True, text=True, check=True)
    assert "my-zsfs-pool" in r.stdout


def test_root_directory_defaults(mnt):
    st = os.stat(mnt)
    assert stat.S_ISDIR(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o1777
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
    assert st.st_nlink == 2 + subdir_count(mnt)
    assert root_entries(mnt) == []


@pytest.mark.parametrize("opts,mode,uid,gid", [
    ("mode=0750,uid=1234,gid=4321", 0o750, 1234, 4321),
    ("mode=755", 0o755, 0, 0),
    ("mode=1700,uid=0,gid=65534", 0o1700, 0, 65534),
])
def test_root_directory_mode_uid_gid(mount_zsfs, opts, mode, uid, gid):
    mnt = mount_zsfs(opts).path
    st = os.stat(mnt)
    assert stat.S_ISDIR(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == mode
    assert (st.st_uid, st.st_gid) == (uid, gid)
    # root can still use it, new entries belong to the creator
    (mnt / "f").write_bytes(b"x")
    assert ((mnt / "f").stat().st_uid, (mnt / "f").stat().st_gid) == (0, 0)


def test_read_only_mount(mount_zsfs):
    m = mount_zsfs("ro")
    mnt = m.path
    assert os.statvfs(mnt).f_flag & os.ST_RDONLY
    e = mount_entry(mnt)
    assert "ro" in e.mount_options.split(","), e
    assert root_entries(mnt) == []
    expect_errno(errno.EROFS, os.open, mnt / "f", os.O_CREAT | os.O_WRONLY, 0o644)
    expect_errno(errno.EROFS, os.mkdir, mnt / "d")
    expect_errno(errno.EROFS, os.symlink, "x", mnt / "l")
    expect_errno(errno.EROFS, os.mkfifo, mnt / "p")
    expect_errno(errno.EROFS, os.chmod, mnt, 0o755)
    expect_errno(errno.EROFS, os.chown, mnt, 1, 1)
    expect_errno(errno.EROFS, os.utime, mnt)
    expect_errno(errno.EROFS, os.setxattr, mnt, "user.x", b"1")
    expect_errno(errno.EROFS, os.open, mnt, os.O_WRONLY | os.O_TMPFILE, 0o600)
    assert stat.S_IMODE(os.stat(mnt).st_mode) == 0o1777
    fd = os.open(mnt, os.O_RDONLY)  # reading is fine
    os.close(fd)


# =============================================================================
# size=, nr_inodes=, mem_limit=
# =============================================================================

def _fill(path, block_factory, limit):
    """Write blocks until ENOSPC (or limit bytes); returns (written, data, errno)."""
    written = bytearray()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = None
    try:
        while len(written) < limit:
            block = block_factory()
            try:
                n = os.write(fd, block)
            except OSError as e:
                err = e.errno
                break
            written += block[:n]
        try:
            os.fsync(fd)
        except OSError as e:
            err = err or e.errno
    finally:
        try:
            os.close(fd)
        except OSError as e:
            err = err or e.errno
    return bytes(written), err


def test_size_limit_enospc_and_df(mount_zsfs):
    size = 8 * MiB
    mnt = mount_zsfs(f"size={size}").path
    sv = os.statvfs(mnt)
    assert sv.f_blocks * sv.f_frsize == size
    df = subprocess.run(["df", "-B1", "--output=size", str(mnt)], capture_output=True,
                        text=True, check=True)
    assert int(df.stdout.split()[-1]) == size, df.stdout

    written, err = _fill(mnt / "fill", lambda: os.urandom(256 * KiB), 4 * size)
    assert err == errno.ENOSPC, f"expected ENOSPC, got {err and errno.errorcode[err]}"
    assert size // 2 <= len(written) <= size, f"wrote {len(written)} bytes into size={size}"
    assert (mnt / "fill").stat().st_size == len(written)
    got = read_file(mnt / "fill")
    assert got == written, "data written before ENOSPC was damaged"
    sv = os.statvfs(mnt)
    assert sv.f_bfree <= sv.f_blocks and sv.f_bavail <= sv.f_bfree
    assert sv.f_bavail * sv.f_frsize < MiB
    # a second file can't get (much) data either; metadata operations still work
    small, err = _fill(mnt / "small", lambda: os.urandom(256 * KiB), 4 * MiB)
    assert err == errno.ENOSPC and len(small) < MiB
    assert read_file(mnt / "small") == small
    os.mkdir(mnt / "still-works")
    os.unlink(mnt / "small")
    # holes cost nothing: a sparse file far larger than size= is fine
    fd = os.open(mnt / "sparse", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, 1 << 40)
        assert os.pread(fd, 4096, 1 << 39) == bytes(4096)
    finally:
        os.close(fd)
    assert (mnt / "sparse").stat().st_size == 1 << 40
    os.unlink(mnt / "sparse")
    # freeing space makes writes possible again
    os.unlink(mnt / "fill")
    assert wait_for(lambda: os.statvfs(mnt).f_bfree * os.statvfs(mnt).f_frsize > size // 2,
                    timeout=5), "space not returned after unlink"
    data = os.urandom(2 * MiB)
    (mnt / "again").write_bytes(data)
    assert read_file(mnt / "again") == data


def _meminfo_total():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise AssertionError


@pytest.mark.parametrize("opt,expected", [
    ("size=1048576", 1 * MiB),
    ("size=512k", 512 * KiB),
    ("size=3m", 3 * MiB),
    ("size=2g", 2 * GiB),
    ("size=10%", None),
])
def test_size_option_syntax(mount_zsfs, opt, expected):
    mnt = mount_zsfs(opt).path
    sv = os.statvfs(mnt)
    total = sv.f_blocks * sv.f_frsize
    if expected is None:
        expected = _meminfo_total() // 10
        assert abs(total - expected) <= expected // 100, (total, expected)
    else:
        assert total == expected


def test_nr_inodes_limit(mount_zsfs):
    mnt = mount_zsfs("nr_inodes=20").path
    sv = os.statvfs(mnt)
    assert sv.f_files == 20
    assert sv.f_ffree == 19  # the root directory uses one
    made = []
    err = None
    for i in range(40):
        p = mnt / f"f{i}"
        try:
            fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)
        except OSError as e:
            err = e.errno
            break
        os.close(fd)
        made.append(p)
        assert os.statvfs(mnt).f_ffree == 19 - len(made)
    assert err == errno.ENOSPC, f"expected ENOSPC, got {err and errno.errorcode[err]}"
    assert len(made) == 19
    assert os.statvfs(mnt).f_ffree == 0
    expect_errno(errno.ENOSPC, os.mkdir, mnt / "d")
    expect_errno(errno.ENOSPC, os.symlink, "x", mnt / "l")
    expect_errno(errno.ENOSPC, os.mkfifo, mnt / "p")
    assert len(root_entries(mnt)) == 19
    # existing files still take data
    (mnt / "f0").write_bytes(b"data")
    assert read_file(mnt / "f0") == b"data"
    # freeing an inode allows one more
    os.unlink(made.pop())
    assert wait_for(lambda: os.statvfs(mnt).f_ffree == 1, timeout=5), \
        f"f_ffree={os.statvfs(mnt).f_ffree} after unlink"
    os.mkdir(mnt / "d")
    assert os.statvfs(mnt).f_ffree == 0
    expect_errno(errno.ENOSPC, os.open, mnt / "x", os.O_CREAT | os.O_WRONLY, 0o644)


@pytest.mark.zsfs_only
def test_mem_limit_counts_compressed_bytes(mount_zsfs):
    limit = 4 * MiB
    mnt = mount_zsfs(f"mem_limit={limit}").path
    # 32 MiB of zeros compress to almost nothing: fits
    zeros, err = _fill(mnt / "zeros", lambda: bytes(MiB), 32 * MiB)
    assert err is None and len(zeros) == 32 * MiB
    # incompressible data runs into the limit
    written, err = _fill(mnt / "random", lambda: os.urandom(256 * KiB), 8 * limit)
    assert err == errno.ENOSPC, f"expected ENOSPC, got {err and errno.errorcode[err]}"
    assert MiB <= len(written) <= limit, f"{len(written)} random bytes under mem_limit={limit}"
    assert read_file(mnt / "random") == written
    assert read_file(mnt / "zeros") == bytes(32 * MiB)
    os.unlink(mnt / "random")
    assert wait_for(lambda: _try_write(mnt / "again", os.urandom(MiB)), timeout=5), \
        "mem_limit space not returned after unlink"


def _try_write(p, data):
    try:
        p.write_bytes(data)
        return read_file(p) == data
    except OSError:
        return False


# =============================================================================
# access by other users, noatime
# =============================================================================

@pytest.mark.zsfs_only
def test_other_users_need_allow_other(mount_zsfs, as_nobody):
    plain = mount_zsfs().path
    (plain / "f").write_bytes(b"x")
    os.chmod(plain / "f", 0o644)
    expect_errno(errno.EACCES, as_nobody, _stat_as_nobody, plain / "f")
    shared = mount_zsfs("allow_other").path
    (shared / "f").write_bytes(b"hello other")
    os.chmod(shared / "f", 0o644)
    assert as_nobody(_stat_as_nobody, shared / "f").st_size == 11
    assert as_nobody(_read, shared / "f") == b"hello other"


def test_noatime(mount_zsfs):
    mnt = mount_zsfs("noatime").path
    f = mnt / "f"
    f.write_bytes(b"data" * 1000)
    mt = f.stat().st_mtime_ns
    old = mt - 100 * 10**9
    os.utime(f, ns=(old, mt))
    drop_cache(f)
    with open(f, "rb") as fh:
        fh.read()
    assert f.stat().st_atime_ns == old, "noatime mount updated atime on read"
    assert "noatime" in mount_entry(mnt).mount_options.split(",")


@pytest.mark.parametrize("opts,nosuid,nodev,noexec", [
    ("suid,dev,exec", False, False, False),
    ("nosuid,nodev,noexec", True, True, True),
])
def test_vfs_flag_options_pass_through(mount_zsfs, opts, nosuid, nodev, noexec):
    mnt = mount_zsfs(opts).path
    flags = os.statvfs(mnt).f_flag
    assert bool(flags & os.ST_NOSUID) == nosuid
    assert bool(flags & os.ST_NODEV) == nodev
    assert bool(flags & os.ST_NOEXEC) == noexec
    # a device node works only without nodev
    os.mknod(mnt / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    if nodev:
        expect_errno(errno.EACCES, os.open, mnt / "null", os.O_RDONLY)
    else:
        fd = os.open(mnt / "null", os.O_RDWR)
        try:
            assert os.write(fd, b"discarded") == 9
            assert os.read(fd, 10) == b""
        finally:
            os.close(fd)
    # executing works only without noexec
    shutil.copy2(shutil.which("true"), mnt / "mytrue")
    if noexec:
        with pytest.raises(PermissionError):
            subprocess.run([str(mnt / "mytrue")])
    else:
        assert subprocess.run([str(mnt / "mytrue")]).returncode == 0


# =============================================================================
# daemon life cycle
# =============================================================================

@pytest.mark.zsfs_only
def test_fusermount_unmount_exits_zero(mount_zsfs):
    m = mount_zsfs()
    (m.path / "f").write_bytes(b"x")
    r = subprocess.run(["fusermount3", "-u", str(m.path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert m.proc.wait(timeout=15) == 0, m.stderr()
    assert not is_mounted(m.path)


@pytest.mark.zsfs_only
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_unmounts_cleanly(mount_zsfs, sig):
    m = mount_zsfs()
    (m.path / "f").write_bytes(b"some data")
    assert read_file(m.path / "f") == b"some data"
    os.kill(m.pid, sig)
    try:
        rc = m.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail(f"daemon did not exit within 15 s of {sig.name}")
    assert rc == 0, f"exit status {rc} after {sig.name}\n{m.stderr()}"
    assert not is_mounted(m.path), f"still mounted after {sig.name}"
    assert os.listdir(m.path) == []  # the empty mount point is back


@pytest.mark.zsfs_only
def test_sigterm_with_open_files(mount_zsfs):
    m = mount_zsfs()
    fh = open(m.path / "busy", "wb")
    try:
        fh.write(b"x" * 1000)
        fh.flush()
        os.kill(m.pid, signal.SIGTERM)
        rc = m.proc.wait(timeout=15)
        assert rc == 0, m.stderr()
        assert not is_mounted(m.path)
    finally:
        try:
            fh.close()
        except OSError:
            pass


_LAUNCHER = r"""
import ctypes, json, os, subprocess, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
    sys.exit("prctl failed")
log = open(sys.argv[1], "ab")
rc = subprocess.call(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=log, stderr=log)
print(json.dumps({"launcher": rc}), flush=True)
while True:
    try:
        pid, st = os.waitpid(-1, 0)
    except ChildProcessError:
        break
    print(json.dumps({"pid": pid, "rc": os.waitstatus_to_exitcode(st)}), flush=True)
print(json.dumps({"done": True}), flush=True)
"""


class Detached:
    """Run a self-daemonizing mount command under a child-subreaper so that
    the detached daemon's exit status can still be collected."""

    def __init__(self, argv, log, env=None):
        self.proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(log), *argv],
                                     stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                     env=env, text=True)
        self.log = log
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.proc.stdout, selectors.EVENT_READ)

    def next_msg(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sel.select(timeout=max(0.0, deadline - time.monotonic())):
                line = self.proc.stdout.readline()
                if not line:
                    return None
                return json.loads(line)
        raise TimeoutError

    def log_text(self):
        try:
            return Path(self.log).read_text(errors="replace")
        except OSError:
            return ""

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
        self.sel.close()


def _detached_lifecycle(argv, mnt: Path, log: Path, env=None):
    d = Detached(argv, log, env)
    try:
        try:
            msg = d.next_msg(20)
        except TimeoutError:
            pytest.fail(f"{argv} did not return within 20 s (does it detach?)\n{d.log_text()}")
        assert msg == {"launcher": 0}, f"{msg}\n{d.log_text()}"
        # the command returns only once the mount is live
        assert is_mounted(mnt), f"command returned before the mount was live\n{d.log_text()}"
        assert mount_entry(mnt).fstype == "fuse.zsfs"
        (mnt / "f").write_bytes(b"detached daemon works")
        assert read_file(mnt / "f") == b"detached daemon works"
        r = subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        statuses = []
        while True:
            try:
                msg = d.next_msg(20)
            except TimeoutError:
                pytest.fail(f"detached daemon still running 20 s after unmount\n{d.log_text()}")
            if msg is None or msg.get("done"):
                break
            statuses.append(msg["rc"])
        assert statuses, "no detached daemon process was observed"
        assert all(rc == 0 for rc in statuses), f"exit statuses {statuses}\n{d.log_text()}"
        assert not is_mounted(mnt)
    finally:
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
            if is_mounted(mnt):
                subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        d.close()


@pytest.fixture
def bare_mountpoint(tmp_path):
    require_fuse()
    parent = Path(tempfile.mkdtemp(prefix="zsfs-test-mnt-"))
    mp = parent / "m"
    mp.mkdir()
    yield mp
    if is_mounted(mp):
        subprocess.run(["umount", "-l", str(mp)], capture_output=True)
    shutil.rmtree(parent, ignore_errors=True)


@pytest.mark.zsfs_only
def test_daemon_mode_detaches_and_unmounts(bare_mountpoint, tmp_path):
    argv = zsfs_argv(bare_mountpoint, "size=64m", foreground=False)
    _detached_lifecycle(argv, bare_mountpoint, tmp_path / "daemon.log")


@pytest.mark.zsfs_only
def test_mount_helper_form_source_mountpoint(bare_mountpoint, tmp_path):
    """``zsfs SOURCE MOUNTPOINT -o OPTIONS`` (how mount.fuse3 calls it)."""
    argv = [sys.executable, "-m", "zsfs", "zsfs-source", str(bare_mountpoint), "-o",
            "size=32m,mode=0755"]
    _detached_lifecycle(argv, bare_mountpoint, tmp_path / "daemon.log")


@pytest.mark.zsfs_only
def test_mount_fuse3_helper(bare_mountpoint, tmp_path):
    helper = shutil.which("mount.fuse3") or next(
        (p for p in ("/sbin/mount.fuse3", "/usr/sbin/mount.fuse3") if os.path.exists(p)), None)
    if helper is None:
        skip_or_fail("mount.fuse3 not installed")
    bindir = os.path.dirname(sys.executable)
    if not os.path.exists(os.path.join(bindir, "zsfs")):
        skip_or_fail("zsfs console script not installed next to the interpreter")
    env = dict(os.environ, PATH=bindir + os.pathsep + os.environ.get("PATH", ""))
    argv = [helper, "zsfs-source", str(bare_mountpoint), "-t", "zsfs", "-o",
            "size=32m,nr_inodes=5000"]
    _detached_lifecycle(argv, bare_mountpoint, tmp_path / "daemon.log", env=env)


@pytest.mark.zsfs_only
def test_daemon_pid_and_rss_visible(mount_zsfs):
    m = mount_zsfs()
    assert m.proc.poll() is None
    assert m.rss_bytes() > 0
    with open(f"/proc/{m.pid}/cmdline", "rb") as f:
        assert b"zsfs" in f.read()
