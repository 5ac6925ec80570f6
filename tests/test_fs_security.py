"""Security matrix: what user ``nobody`` can and cannot do on a zsfs mounted with
``allow_other``, checked against a kernel tmpfs.

Each scenario runs twice, on zsfs and on a tmpfs mounted for the test, with the same
setup done as root and the same actions done as ``nobody:nogroup`` (a forked child, see
conftest's ``as_nobody``). The two outcome tables must be equal: the expected
behaviour is whatever the kernel does on tmpfs, not a guess. Each scenario also
asserts the outcomes that matter on their own (a denial is a denial), so that a test
can never pass by both sides doing nothing.

The control directory ``.zsfs/`` has no tmpfs counterpart: there the expectations are
the README's (owner-only writes, nothing but counters shown).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import pytest

try:
    from conftest import require_fuse, skip_or_fail
except ImportError:  # tests/ imported as a package
    from tests.conftest import require_fuse, skip_or_fail

NOBODY, NOGROUP = 65534, 65534
OTHER_UID = 12345                      # a third user, owner of some files
AT_FDCWD = -100
RENAME_EXCHANGE = 2
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2

libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                           ctypes.c_uint]
libc.renameat2.restype = ctypes.c_int
libc.listxattr.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t]
libc.listxattr.restype = ctypes.c_ssize_t


class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


libc.utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(Timespec),
                           ctypes.c_int]
libc.utimensat.restype = ctypes.c_int


def _raise_errno(ret: int, path) -> None:
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), os.fspath(path))


def exchange(a, b) -> None:
    _raise_errno(libc.renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b),
                                RENAME_EXCHANGE), a)


def utimensat(path, atime, mtime) -> None:
    """atime/mtime: seconds, or 'now' / 'omit'."""
    def ts(v):
        return Timespec(0, {"now": UTIME_NOW, "omit": UTIME_OMIT}[v]) if isinstance(v, str) \
            else Timespec(v, 0)
    _raise_errno(libc.utimensat(AT_FDCWD, os.fsencode(path), (Timespec * 2)(ts(atime), ts(mtime)),
                                0), path)


# --------------------------------------------------------------------------
# the two filesystems
# --------------------------------------------------------------------------

def _world_traversable_dir(prefix: str) -> Path:
    d = Path(tempfile.mkdtemp(prefix=prefix))
    d.chmod(0o755)
    return d


def _mount_tmpfs(opts: str) -> Path:
    for tool in ("mount", "umount"):
        if shutil.which(tool) is None:
            skip_or_fail(f"{tool} is not installed")
    d = _world_traversable_dir("zsfs-test-tmpfs-")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"mode=1777,size=64m,{opts}",
                        "zsfs-test-tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        d.rmdir()
        skip_or_fail(f"cannot mount a tmpfs to compare with: {r.stderr.strip()}")
    return d


@pytest.fixture
def tmpfs_factory():
    """``tmpfs(opts="")`` -> Path of a fresh tmpfs (mode 1777), unmounted afterwards."""
    mounted: list[Path] = []

    def make(opts: str = "") -> Path:
        d = _mount_tmpfs(opts)
        mounted.append(d)
        return d

    yield make
    for d in mounted:
        subprocess.run(["umount", str(d)], capture_output=True)
        try:
            d.rmdir()
        except OSError:
            pass


@pytest.fixture(params=["allow_other", "allow_other,writeback"],
                ids=["default", "writeback"])
def roots(request, mount_zsfs, tmpfs_factory) -> dict[str, Path]:
    """A zsfs with allow_other (and, once, the writeback cache, under which the kernel
    clears set-ID bits and keeps times itself) and a tmpfs, both fresh, root-owned,
    mode 1777."""
    require_fuse()
    zsfs = mount_zsfs(request.param).path
    tmpfs = tmpfs_factory()
    for root in (zsfs, tmpfs):
        st = os.stat(root)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o1777, 0, 0), root
    return {"zsfs": zsfs, "tmpfs": tmpfs}


def compare(roots: dict[str, Path], scenario: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """Run scenario on both filesystems; their outcome tables must be equal. Returns
    tmpfs's table (which the caller checks for the outcomes that matter)."""
    got = {name: scenario(root) for name, root in roots.items()}
    zsfs, tmpfs = got["zsfs"], got["tmpfs"]
    assert zsfs.keys() == tmpfs.keys()
    differ = {k: (zsfs[k], tmpfs[k]) for k in tmpfs if zsfs[k] != tmpfs[k]}
    assert not differ, "zsfs differs from tmpfs (zsfs, tmpfs): " + "; ".join(
        f"{k}: {v}" for k, v in differ.items())
    return tmpfs


def outcome(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """'ok' (or what fn returns, if not None) or the errno's name."""
    try:
        r = fn(*args, **kwargs)
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    return "ok" if r is None else r


def protected_hardlinks() -> bool:
    with open("/proc/sys/fs/protected_hardlinks") as f:
        return f.read().strip() == "1"


def mode_of(path) -> str:
    return oct(stat.S_IMODE(os.lstat(path).st_mode))


def owner_of(path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid


def make_file(path, mode: int, uid: int = 0, gid: int = 0, data: bytes = b"data\n") -> Path:
    """A file with exactly this owner and mode (chown first: it clears set-ID bits)."""
    path = Path(path)
    path.write_bytes(data)
    os.chown(path, uid, gid)
    os.chmod(path, mode)
    assert stat.S_IMODE(os.stat(path).st_mode) == mode
    return path


def make_dir(path, mode: int, uid: int = 0, gid: int = 0) -> Path:
    path = Path(path)
    path.mkdir()
    os.chown(path, uid, gid)
    os.chmod(path, mode)
    return path


def try_open(path, flags: int, mode: int = 0o644) -> None:
    os.close(os.open(path, flags, mode))


def read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def write(path, data: bytes = b"nobody was here\n", flags: int = os.O_WRONLY) -> int:
    fd = os.open(path, flags)
    try:
        return os.write(fd, data)
    finally:
        os.close(fd)


def ftruncate(path, size: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


SCRIPT = b"#!/bin/sh\necho ran as $(id -u)\n"


def run(path) -> Any:
    """Execute path; (exit status, output), or the errno of execve."""
    try:
        r = subprocess.run([str(path)], capture_output=True, timeout=30)
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    return r.returncode, r.stdout.decode().strip()


# --------------------------------------------------------------------------
# modes: read, write, execute, search
# --------------------------------------------------------------------------

def test_modes_read_write_exec_search(roots, as_nobody):
    def scenario(root: Path) -> dict[str, Any]:
        d = make_dir(root / "perm", 0o755)
        files = {m: make_file(d / f"f{m:o}", m, data=b"secret\n")
                 for m in (0o600, 0o644, 0o604, 0o602, 0o606, 0o000, 0o640)}
        make_file(d / "x744", 0o744, data=SCRIPT)
        make_file(d / "x755", 0o755, data=SCRIPT)
        make_file(d / "x711", 0o711, data=SCRIPT)
        make_file(d / "x654", 0o654, data=SCRIPT)      # the group may execute, others not
        make_file(d / "g650", 0o650, gid=NOGROUP, data=SCRIPT)   # nobody's group may
        for m in (0o700, 0o711, 0o744, 0o755, 0o733, 0o1733):
            sub = make_dir(d / f"d{m:o}", m)
            make_file(sub / "f", 0o644, data=b"inside\n")

        def actions() -> dict[str, Any]:
            out: dict[str, Any] = {}
            for m, f in files.items():
                out[f"read {m:o}"] = outcome(read, f)
                out[f"write {m:o}"] = outcome(write, f, b"x")
                out[f"truncate {m:o}"] = outcome(os.truncate, f, 0)
                out[f"O_RDWR {m:o}"] = outcome(try_open, f, os.O_RDWR)
                out[f"access {m:o}"] = [os.access(f, a) for a in (os.R_OK, os.W_OK, os.X_OK)]
            out["O_NOATIME on another's file"] = outcome(try_open, d / "f644",
                                                         os.O_RDONLY | os.O_NOATIME)
            for name in ("x744", "x755", "x711", "x654", "g650"):
                out[f"exec {name}"] = run(d / name)
            for m in (0o700, 0o711, 0o744, 0o755, 0o733, 0o1733):
                sub = d / f"d{m:o}"
                out[f"list d{m:o}"] = outcome(lambda p: sorted(os.listdir(p)), sub)
                out[f"stat d{m:o}/f"] = outcome(lambda p: os.stat(p).st_size, sub / "f")
                out[f"read d{m:o}/f"] = outcome(read, sub / "f")
                out[f"create in d{m:o}"] = outcome(try_open, sub / "new", os.O_CREAT | os.O_WRONLY)
                out[f"mkdir in d{m:o}"] = outcome(os.mkdir, sub / "newdir")
                out[f"unlink d{m:o}/f"] = outcome(os.unlink, sub / "f")
                out[f"chdir d{m:o}"] = outcome(os.chdir, sub)
            out["rename in 755"] = outcome(os.rename, d / "f644", d / "moved")
            out["symlink in 755"] = outcome(os.symlink, "f644", d / "link")
            out["link in 755"] = outcome(os.link, d / "f644", d / "hard")
            out["mknod fifo in 755"] = outcome(os.mkfifo, d / "fifo")
            out["rmdir d755"] = outcome(os.rmdir, d / "d755")
            return out

        out = as_nobody(actions)
        out["contents after"] = {m: read(f) for m, f in files.items()}
        out["d733 after"] = sorted(os.listdir(d / "d733"))
        out["d1733 after"] = sorted(os.listdir(d / "d1733"))
        return out

    r = compare(roots, scenario)
    assert r["read 600"] == r["read 640"] == r["read 0"] == r["read 602"] == "EACCES"
    assert r["read 644"] == r["read 604"] == r["read 606"] == b"secret\n"
    assert r["write 644"] == r["write 604"] == r["write 600"] == "EACCES"
    assert r["truncate 644"] == "EACCES" and r["O_RDWR 602"] == "EACCES"
    assert r["write 602"] == r["write 606"] == 1 and r["truncate 606"] == "ok"
    assert r["contents after"][0o602] == r["contents after"][0o606] == b""   # truncated
    assert r["contents after"][0o644] == b"secret\n"
    assert r["access 604"] == [True, False, False]
    assert r["O_NOATIME on another's file"] == "EPERM"
    assert r["exec x744"] == "EACCES" and r["exec x654"] == "EACCES"
    assert r["exec x755"] == (0, f"ran as {NOBODY}") == r["exec g650"]
    assert r["exec x711"][0] != 0            # the kernel runs it, sh cannot read it
    assert r["list d700"] == r["stat d700/f"] == r["chdir d700"] == "EACCES"
    assert r["list d711"] == "EACCES" and r["stat d711/f"] == 7 and r["chdir d711"] == "ok"
    assert r["list d744"] == ["f"] and r["stat d744/f"] == "EACCES"
    assert r["read d755/f"] == b"inside\n"
    assert r["create in d755"] == r["mkdir in d755"] == r["unlink d755/f"] == "EACCES"
    assert r["rename in 755"] == r["symlink in 755"] == "EACCES"
    # fs.protected_hardlinks refuses a link to a file nobody cannot write before the
    # directory's permission is looked at
    assert r["link in 755"] == ("EPERM" if protected_hardlinks() else "EACCES")
    assert r["mknod fifo in 755"] == r["rmdir d755"] == "EACCES"
    # write and search without read (733): create and unlink, but cannot list
    assert r["list d733"] == "EACCES" and r["create in d733"] == "ok"
    assert r["unlink d733/f"] == "ok" and r["d733 after"] == ["new", "newdir"]
    # the same with the sticky bit: root's file stays
    assert r["unlink d1733/f"] == "EPERM" and r["d1733 after"] == ["f", "new", "newdir"]


# --------------------------------------------------------------------------
# ownership: chmod, chown, xattrs by a non-owner
# --------------------------------------------------------------------------

def test_chmod_chown_xattr_by_non_owner(roots, as_nobody):
    def scenario(root: Path) -> dict[str, Any]:
        d = make_dir(root / "own", 0o777)
        rootf = make_file(d / "rootf", 0o666)
        root644 = make_file(d / "root644", 0o644)
        nob_rootgrp = make_file(d / "nob_rootgrp", 0o644, uid=NOBODY, gid=0)
        sticky = make_dir(d / "sticky", 0o1777)
        os.setxattr(rootf, "user.root", b"r")

        def actions() -> dict[str, Any]:
            mine = d / "mine"
            mine.write_bytes(b"mine\n")
            out: dict[str, Any] = {"mine owner": owner_of(mine)}
            out["chmod another's"] = outcome(os.chmod, rootf, 0o777)
            out["chmod another's same mode"] = outcome(os.chmod, rootf, 0o666)
            out["chown another's to me"] = outcome(os.chown, rootf, NOBODY, -1)
            out["chgrp another's"] = outcome(os.chown, rootf, -1, NOGROUP)
            out["chown another's -1 -1"] = outcome(os.chown, rootf, -1, -1)
            out["chown mine to root"] = outcome(os.chown, mine, 0, -1)
            out["chown mine to another"] = outcome(os.chown, mine, OTHER_UID, -1)
            out["chgrp mine to root"] = outcome(os.chown, mine, -1, 0)
            out["chgrp mine to nogroup"] = outcome(os.chown, mine, -1, NOGROUP)
            out["chown mine to me"] = outcome(os.chown, mine, NOBODY, NOGROUP)
            out["chmod mine"] = outcome(os.chmod, mine, 0o600)
            out["chmod mine u+s"] = outcome(os.chmod, mine, 0o4755)
            out["mode mine"] = mode_of(mine)
            out["chmod mine g+s"] = outcome(os.chmod, mine, 0o2755)
            out["mode mine g+s"] = mode_of(mine)          # nogroup: member, kept
            out["chmod g+s, group root"] = outcome(os.chmod, nob_rootgrp, 0o2755)
            out["mode g+s, group root"] = mode_of(nob_rootgrp)   # not a member: dropped
            out["chmod 7777, group root"] = outcome(os.chmod, nob_rootgrp, 0o7777)
            out["mode 7777, group root"] = mode_of(nob_rootgrp)
            out["setxattr user on 0666"] = outcome(os.setxattr, rootf, "user.n", b"n")
            out["setxattr user on 0644"] = outcome(os.setxattr, root644, "user.n", b"n")
            out["removexattr user on 0644"] = outcome(os.removexattr, root644, "user.x")
            out["getxattr user on 0666"] = outcome(os.getxattr, rootf, "user.root")
            out["setxattr trusted"] = outcome(os.setxattr, mine, "trusted.n", b"n")
            out["setxattr security"] = outcome(os.setxattr, mine, "security.n", b"n")
            out["setxattr user on sticky dir"] = outcome(os.setxattr, sticky, "user.n", b"n")
            out["setxattr user on my symlink"] = outcome(
                lambda: (os.symlink("mine", d / "sl"),
                         os.setxattr(d / "sl", "user.n", b"n", follow_symlinks=False)))
            return out

        out = as_nobody(actions)
        out["rootf after"] = (mode_of(rootf), owner_of(rootf))
        out["mine after"] = (mode_of(d / "mine"), owner_of(d / "mine"))
        out["rootf xattrs"] = sorted(os.listxattr(rootf))
        out["root644 xattrs"] = sorted(os.listxattr(root644))
        return out

    r = compare(roots, scenario)
    assert r["mine owner"] == (NOBODY, NOGROUP)
    for k in ("chmod another's", "chmod another's same mode", "chown another's to me",
              "chgrp another's", "chown mine to root", "chown mine to another",
              "chgrp mine to root"):
        assert r[k] == "EPERM", k
    assert r["chgrp mine to nogroup"] == r["chown mine to me"] == r["chmod mine"] == "ok"
    assert r["mode mine"] == "0o4755" and r["mode mine g+s"] == "0o2755"
    assert r["chmod g+s, group root"] == "ok" and r["mode g+s, group root"] == "0o755"
    assert r["mode 7777, group root"] == "0o5777"
    assert r["rootf after"] == ("0o666", (0, 0))
    assert r["setxattr user on 0666"] == "ok" and r["getxattr user on 0666"] == b"r"
    assert r["setxattr user on 0644"] == r["removexattr user on 0644"] == "EACCES"
    assert r["setxattr trusted"] == r["setxattr security"] == "EPERM"
    assert r["setxattr user on sticky dir"] == r["setxattr user on my symlink"] == "EPERM"
    assert r["rootf xattrs"] == ["user.n", "user.root"] and r["root644 xattrs"] == []


def test_listxattr_hides_trusted_names_from_unprivileged_users(roots, as_nobody):
    """trusted.* xattrs are for CAP_SYS_ADMIN: others can neither read them nor, as on
    tmpfs, see their names."""
    def scenario(root: Path) -> dict[str, Any]:
        f = make_file(root / "f", 0o644)
        os.setxattr(f, "trusted.secret-name", b"secret-value")
        os.setxattr(f, "user.visible", b"v")
        os.setxattr(f, "security.label", b"l")
        out = as_nobody(lambda: {
            "list": sorted(os.listxattr(f)),
            "get trusted": outcome(os.getxattr, f, "trusted.secret-name"),
            "get user": outcome(os.getxattr, f, "user.visible"),
            "get security": outcome(os.getxattr, f, "security.label"),
        })
        out["root list"] = sorted(os.listxattr(f))
        out["listxattr size as nobody"] = as_nobody(
            lambda: libc.listxattr(os.fsencode(f), None, 0))
        return out

    r = compare(roots, scenario)
    assert r["list"] == ["security.label", "user.visible"]
    assert r["get trusted"] == "ENODATA" and r["get user"] == b"v"
    assert r["root list"] == ["security.label", "trusted.secret-name", "user.visible"]
    assert r["listxattr size as nobody"] == len(b"security.label\0user.visible\0")


# --------------------------------------------------------------------------
# timestamps
# --------------------------------------------------------------------------

def test_utimes_rules(roots, as_nobody):
    def scenario(root: Path) -> dict[str, Any]:
        d = make_dir(root / "times", 0o777)
        rootf = make_file(d / "rootf", 0o666)
        root644 = make_file(d / "root644", 0o644)
        os.utime(rootf, (1000, 1000))
        os.utime(root644, (1000, 1000))

        def actions() -> dict[str, Any]:
            mine = d / "mine"
            mine.write_bytes(b"")
            return {
                "utime now, writable": outcome(os.utime, rootf),
                "utime explicit, writable": outcome(os.utime, rootf, (5, 5)),
                "utime now, read-only": outcome(os.utime, root644),
                "utime explicit, read-only": outcome(os.utime, root644, (5, 5)),
                "utimensat now/now, writable": outcome(utimensat, rootf, "now", "now"),
                "utimensat now/omit, read-only": outcome(utimensat, root644, "now", "omit"),
                "utimensat omit/omit, read-only": outcome(utimensat, root644, "omit", "omit"),
                "utimensat omit/explicit, writable": outcome(utimensat, rootf, "omit", 7),
                "utimensat now/explicit, writable": outcome(utimensat, rootf, "now", 7),
                "utime explicit, mine": outcome(os.utime, mine, (123, 456)),
                "utimensat omit/explicit, mine": outcome(utimensat, mine, "omit", 789),
            }

        t0 = time.time()
        out = as_nobody(actions)
        st = os.stat(rootf)
        out["rootf times now"] = st.st_mtime >= t0 - 1 and st.st_atime >= t0 - 1
        st = os.stat(root644)
        out["root644 times"] = (st.st_atime, st.st_mtime)
        st = os.stat(d / "mine")
        out["mine times"] = (st.st_atime, st.st_mtime)
        return out

    r = compare(roots, scenario)
    assert r["utime now, writable"] == r["utimensat now/now, writable"] == "ok"
    assert r["utime explicit, writable"] == r["utimensat omit/explicit, writable"] == "EPERM"
    assert r["utimensat now/explicit, writable"] == "EPERM"
    assert r["utime now, read-only"] == "EACCES"
    # only both-now is a "touch" that write access allows; one now, one omitted is not
    assert r["utime explicit, read-only"] == r["utimensat now/omit, read-only"] == "EPERM"
    assert r["utimensat omit/omit, read-only"] == "ok"
    assert r["rootf times now"] is True and r["root644 times"] == (1000, 1000)
    assert r["utime explicit, mine"] == "ok" and r["mine times"] == (123, 789)


# --------------------------------------------------------------------------
# sticky directories
# --------------------------------------------------------------------------

def test_sticky_directories(roots, as_nobody):
    def scenario(root: Path) -> dict[str, Any]:
        d = make_dir(root / "sticky", 0o1777)
        make_file(d / "rootf", 0o666)
        make_file(d / "rootf2", 0o666)
        make_file(d / "root600", 0o600)
        make_file(d / "otherf", 0o666, uid=OTHER_UID, gid=OTHER_UID)
        make_dir(d / "rootsub", 0o777)
        mine = make_dir(root / "nobodys", 0o1777, uid=NOBODY, gid=NOGROUP)
        make_file(mine / "rf", 0o644)
        plain = make_dir(root / "plain", 0o777)
        make_file(plain / "rf", 0o644)

        def actions() -> dict[str, Any]:
            for name in ("mine", "mine2", "mine3"):
                (d / name).write_bytes(b"nobody's\n")
            os.mkdir(d / "nobsub")
            return {
                "unlink root's": outcome(os.unlink, d / "rootf"),
                "unlink other's": outcome(os.unlink, d / "otherf"),
                "rename root's away": outcome(os.rename, d / "rootf", d / "stolen"),
                "rename root's out": outcome(os.rename, d / "rootf", root / "stolen"),
                "rename mine over root's": outcome(os.rename, d / "mine2", d / "rootf"),
                "rename mine over other's": outcome(os.rename, d / "mine2", d / "otherf"),
                "exchange mine and root's": outcome(exchange, d / "mine2", d / "rootf"),
                "rmdir root's dir": outcome(os.rmdir, d / "rootsub"),
                "rename root's dir": outcome(os.rename, d / "rootsub", d / "x"),
                "write into root's 0666": outcome(write, d / "rootf", b"ROOT"),
                "hard link root's 0666": outcome(os.link, d / "rootf2", d / "l1"),
                "hard link root's 0600": outcome(os.link, d / "root600", d / "l2"),
                "unlink my link": outcome(os.unlink, d / "l1"),
                "rename mine": outcome(os.rename, d / "mine", d / "renamed"),
                "unlink mine": outcome(os.unlink, d / "renamed"),
                "rename mine over mine": outcome(os.rename, d / "mine3", d / "mine2"),
                "rmdir mine": outcome(os.rmdir, d / "nobsub"),
                "unlink root's in my sticky dir": outcome(os.unlink, mine / "rf"),
                "unlink root's, not sticky": outcome(os.unlink, plain / "rf"),
            }

        out = as_nobody(actions)
        out["left"] = sorted(os.listdir(d))
        out["rootf"] = read(d / "rootf")
        # root may remove nobody's files in a sticky directory
        out["root unlinks nobody's"] = outcome(os.unlink, d / "mine2")
        return out

    r = compare(roots, scenario)
    for k in ("unlink root's", "unlink other's", "rename root's away", "rename root's out",
              "rename mine over root's", "rename mine over other's", "exchange mine and root's",
              "rmdir root's dir", "rename root's dir"):
        assert r[k] == "EPERM", k
    # fs.protected_hardlinks: no hard link to a file one could neither read nor write
    assert r["hard link root's 0600"] == ("EPERM" if protected_hardlinks() else "ok")
    # the link is root's file under a second name: root's to remove
    assert r["unlink my link"] == ("EPERM" if r["hard link root's 0666"] == "ok" else "ENOENT")
    for k in ("write into root's 0666", "hard link root's 0666", "rename mine",
              "unlink mine", "rename mine over mine", "rmdir mine",
              "unlink root's in my sticky dir", "unlink root's, not sticky",
              "root unlinks nobody's"):
        assert r[k] in ("ok", 4), k
    assert r["left"] == ["l1", "mine2", "otherf", "root600", "rootf", "rootf2", "rootsub"]
    assert r["rootf"] == b"ROOT\n"


# --------------------------------------------------------------------------
# set-user-ID and set-group-ID bits
# --------------------------------------------------------------------------

# (name, mode, owner uid, group, who acts, action)
SETID_CASES: list[tuple[str, int, int, int, str, str]] = [
    ("write 6777", 0o6777, 0, 0, "nobody", "write"),
    ("append 6777", 0o6777, 0, 0, "nobody", "append"),
    ("pwrite at 1 MiB 6777", 0o6777, 0, 0, "nobody", "pwrite"),
    ("ftruncate 6777", 0o6777, 0, 0, "nobody", "ftruncate"),
    ("ftruncate to same size 6777", 0o6777, 0, 0, "nobody", "ftruncate same"),
    ("truncate 6777", 0o6777, 0, 0, "nobody", "truncate"),
    ("O_TRUNC 6777", 0o6777, 0, 0, "nobody", "O_TRUNC"),
    ("O_TRUNC then write 6777", 0o6777, 0, 0, "nobody", "O_TRUNC write"),
    ("O_WRONLY, no write 6777", 0o6777, 0, 0, "nobody", "open only"),
    ("write 4777", 0o4777, 0, 0, "nobody", "write"),
    ("write 2777", 0o2777, 0, 0, "nobody", "write"),
    ("write 2767 not in group", 0o2767, 0, 0, "nobody", "write"),
    ("truncate 2767 not in group", 0o2767, 0, 0, "nobody", "truncate"),
    ("ftruncate 2767 not in group", 0o2767, 0, 0, "nobody", "ftruncate"),
    ("O_TRUNC 2767 not in group", 0o2767, 0, 0, "nobody", "O_TRUNC"),
    ("write 2767 in group", 0o2767, 0, NOGROUP, "nobody", "write"),
    ("O_TRUNC 2767 in group", 0o2767, 0, NOGROUP, "nobody", "O_TRUNC"),
    ("truncate 2767 in group", 0o2767, 0, NOGROUP, "nobody", "truncate"),
    ("write 2777 in group", 0o2777, 0, NOGROUP, "nobody", "write"),
    ("write 6767 not in group", 0o6767, 0, 0, "nobody", "write"),
    ("O_TRUNC 6767 not in group", 0o6767, 0, 0, "nobody", "O_TRUNC"),
    ("write own 4755", 0o4755, NOBODY, NOGROUP, "nobody", "write"),
    ("write own 6775", 0o6775, NOBODY, NOGROUP, "nobody", "write"),
    ("O_TRUNC own 6755", 0o6755, NOBODY, NOGROUP, "nobody", "O_TRUNC"),
    ("write own 2745 group root", 0o2745, NOBODY, 0, "nobody", "write"),
    ("chown -1 -1 own 2745 group root", 0o2745, NOBODY, 0, "nobody", "chown -1"),
    ("chgrp own 2745 group root to nogroup", 0o2745, NOBODY, 0, "nobody", "chgrp nogroup"),
    ("chgrp own 6755 group root to nogroup", 0o6755, NOBODY, 0, "nobody", "chgrp nogroup"),
    ("chmod own 2745 group root keeps rest", 0o2745, NOBODY, 0, "nobody", "chmod 2745"),
    ("chmod own 0644 group nogroup to 2745", 0o644, NOBODY, NOGROUP, "nobody", "chmod 2745"),
    ("touch 2767 not in group", 0o2767, 0, 0, "nobody", "touch"),
    ("utime own 2745 group root", 0o2745, NOBODY, 0, "nobody", "utime"),
    ("read 6777", 0o6777, 0, 0, "nobody", "read"),
    ("root write 6777", 0o6777, 0, 0, "root", "write"),
    ("root truncate 6777", 0o6777, 0, 0, "root", "truncate"),
    ("root O_TRUNC 6777", 0o6777, 0, 0, "root", "O_TRUNC"),
    ("root write 2767", 0o2767, 0, 0, "root", "write"),
    ("root O_TRUNC 2767 not root's group", 0o2767, 0, NOGROUP, "root", "O_TRUNC"),
    ("root chown -1 -1 6777", 0o6777, 0, 0, "root", "chown -1"),
    ("root chown -1 -1 2767 other group", 0o2767, NOBODY, NOGROUP, "root", "chown -1"),
    ("root chown 6755 to nobody", 0o6755, 0, 0, "root", "chown nobody"),
    ("root chown 2745 to nobody", 0o2745, 0, 0, "root", "chown nobody"),
]


def _act(path: Path, action: str) -> Any:
    if action == "write":
        return outcome(write, path, b"X")
    if action == "append":
        return outcome(write, path, b"X", os.O_WRONLY | os.O_APPEND)
    if action == "pwrite":
        def pwrite():
            fd = os.open(path, os.O_WRONLY)
            try:
                return os.pwrite(fd, b"X", 1 << 20)
            finally:
                os.close(fd)
        return outcome(pwrite)
    if action == "ftruncate":
        return outcome(ftruncate, path, 2)
    if action == "ftruncate same":
        return outcome(ftruncate, path, os.stat(path).st_size)
    if action == "truncate":
        return outcome(os.truncate, path, 3)
    if action == "O_TRUNC":
        return outcome(try_open, path, os.O_WRONLY | os.O_TRUNC)
    if action == "O_TRUNC write":
        return outcome(write, path, b"Y", os.O_WRONLY | os.O_TRUNC)
    if action == "open only":
        return outcome(try_open, path, os.O_WRONLY)
    if action == "read":
        return outcome(read, path)
    if action == "chown -1":
        return outcome(os.chown, path, -1, -1)
    if action == "chgrp nogroup":
        return outcome(os.chown, path, -1, NOGROUP)
    if action == "chown nobody":
        return outcome(os.chown, path, NOBODY, -1)
    if action == "chmod 2745":
        return outcome(os.chmod, path, 0o2745)
    if action == "touch":
        return outcome(os.utime, path)
    if action == "utime":
        return outcome(os.utime, path, (1, 1))
    raise AssertionError(action)


def test_setuid_setgid_bits_after_writes_truncates_and_chowns(roots, as_nobody):
    def scenario(root: Path) -> dict[str, Any]:
        d = make_dir(root / "setid", 0o777)
        paths = {name: make_file(d / f"f{i}", mode, uid, gid, data=b"abcdef\n")
                 for i, (name, mode, uid, gid, _, _) in enumerate(SETID_CASES)}

        def act_all(who: str) -> dict[str, Any]:
            return {name: _act(paths[name], action)
                    for name, _, _, _, actor, action in SETID_CASES if actor == who}

        out = {f"{k}: result": v for k, v in as_nobody(act_all, "nobody").items()}
        out.update({f"{k}: result": v for k, v in act_all("root").items()})
        for name, path in paths.items():
            out[f"{name}: mode"] = mode_of(path)
            # what nobody sees through its own (cached) view of the inode
            out[f"{name}: mode seen by nobody"] = as_nobody(mode_of, path)
        return out

    r = compare(roots, scenario)
    expect = {
        "write 6777": "0o777", "append 6777": "0o777", "pwrite at 1 MiB 6777": "0o777",
        "ftruncate 6777": "0o777", "ftruncate to same size 6777": "0o777",
        "truncate 6777": "0o777", "O_TRUNC 6777": "0o777",
        "O_TRUNC then write 6777": "0o777", "O_WRONLY, no write 6777": "0o6777",
        "write 4777": "0o777", "write 2777": "0o777",
        "write 2767 not in group": "0o767", "truncate 2767 not in group": "0o767",
        "ftruncate 2767 not in group": "0o767", "O_TRUNC 2767 not in group": "0o767",
        "write 2767 in group": "0o2767", "O_TRUNC 2767 in group": "0o2767",
        "truncate 2767 in group": "0o2767",
        "write 2777 in group": "0o777", "write 6767 not in group": "0o767",
        "O_TRUNC 6767 not in group": "0o767",
        "write own 4755": "0o755", "write own 6775": "0o775", "O_TRUNC own 6755": "0o755",
        "write own 2745 group root": "0o745", "chown -1 -1 own 2745 group root": "0o745",
        "chgrp own 2745 group root to nogroup": "0o745",
        "chgrp own 6755 group root to nogroup": "0o755",
        "chmod own 2745 group root keeps rest": "0o745",
        "chmod own 0644 group nogroup to 2745": "0o2745",
        "touch 2767 not in group": "0o2767", "utime own 2745 group root": "0o2745",
        "read 6777": "0o6777",
        "root write 6777": "0o6777", "root truncate 6777": "0o6777",
        "root O_TRUNC 6777": "0o6777", "root write 2767": "0o2767",
        "root O_TRUNC 2767 not root's group": "0o2767",
        "root chown -1 -1 6777": "0o777", "root chown -1 -1 2767 other group": "0o2767",
        "root chown 6755 to nobody": "0o755", "root chown 2745 to nobody": "0o2745",
    }
    assert expect.keys() == {c[0] for c in SETID_CASES}
    for name, mode in expect.items():
        assert r[f"{name}: result"] not in ("EACCES", "EPERM"), name
        assert (r[f"{name}: mode"], r[f"{name}: mode seen by nobody"]) == (mode, mode), name


@pytest.mark.parametrize("flags", ["", "suid"])
def test_setuid_executables_follow_the_mount_flags(mount_zsfs, tmpfs_factory, as_nobody, flags):
    """libfuse mounts nosuid unless told suid; tmpfs the other way round. Either way
    a set-user-ID root program runs as root exactly when the mount allows it."""
    idprog = shutil.which("id")
    if idprog is None:
        skip_or_fail("id(1) is not installed")
    zsfs = mount_zsfs("allow_other" + (",suid" if flags else "")).path
    tmpfs = tmpfs_factory("suid" if flags else "nosuid")

    def scenario(root: Path) -> dict[str, Any]:
        prog = make_file(root / "id", 0o4755, data=Path(idprog).read_bytes())
        return {"euid": as_nobody(
            lambda: subprocess.run([str(prog), "-u"], capture_output=True, timeout=30)
            .stdout.decode().strip())}

    r = compare({"zsfs": zsfs, "tmpfs": tmpfs}, scenario)
    assert r["euid"] == ("0" if flags else str(NOBODY))


def _id_u(prog) -> str:
    """The effective uid program *prog* (a copy of id(1)) runs with."""
    r = subprocess.run([str(prog), "-u"], capture_output=True, timeout=30)
    return r.stdout.decode().strip() or f"exit {r.returncode}: {r.stderr.decode().strip()}"


def test_setuid_file_emptied_with_o_trunc_no_longer_runs_as_root(mount_zsfs, tmpfs_factory,
                                                                 as_nobody):
    """open(O_TRUNC) by nobody clears S_ISUID, also in the kernel's cached view of the
    inode: refilled by root (who keeps set-ID bits when writing), the program must
    not run as root, since exec takes the set-ID bits from that cached mode."""
    idprog = shutil.which("id")
    if idprog is None:
        skip_or_fail("id(1) is not installed")
    program = Path(idprog).read_bytes()

    def scenario(root: Path) -> dict[str, Any]:
        prog = make_file(root / "prog", 0o4777, data=program)
        out = {"euid before": as_nobody(_id_u, prog)}
        out["O_TRUNC"] = as_nobody(outcome, try_open, prog, os.O_WRONLY | os.O_TRUNC)
        fd = os.open(prog, os.O_WRONLY)
        try:
            assert os.write(fd, program) == len(program)
        finally:
            os.close(fd)
        out["euid after"] = as_nobody(_id_u, prog)
        out["mode"] = mode_of(prog)
        return out

    zsfs = mount_zsfs("allow_other,suid").path
    r = compare({"zsfs": zsfs, "tmpfs": tmpfs_factory("suid")}, scenario)
    assert r == {"euid before": "0", "O_TRUNC": "ok", "euid after": str(NOBODY),
                 "mode": "0o777"}


@pytest.mark.parametrize("flags", ["", "suid"])
def test_setuid_programs_follow_the_mount_flags(mount_zsfs, tmpfs_factory, as_nobody, flags):
    """libfuse mounts nosuid unless told suid (tmpfs the other way round): a set-user-ID
    root program runs as root exactly when the mount allows it."""
    idprog = shutil.which("id")
    if idprog is None:
        skip_or_fail("id(1) is not installed")
    zsfs = mount_zsfs("allow_other" + (",suid" if flags else "")).path
    tmpfs = tmpfs_factory("suid" if flags else "nosuid")

    def scenario(root: Path) -> dict[str, Any]:
        prog = make_file(root / "id", 0o4755, data=Path(idprog).read_bytes())
        return {"euid": as_nobody(_id_u, prog)}

    r = compare({"zsfs": zsfs, "tmpfs": tmpfs}, scenario)
    assert r["euid"] == ("0" if flags else str(NOBODY))


# --------------------------------------------------------------------------
# creating: owners, set-group-ID directories, device nodes
# --------------------------------------------------------------------------

def test_what_nobody_creates(roots, as_nobody):
    def scenario(root: Path) -> dict[str, Any]:
        sg = make_dir(root / "sgid", 0o2777)            # root:root, set-group-ID
        plain = make_dir(root / "plain", 0o777)

        def actions() -> dict[str, Any]:
            os.umask(0)
            out: dict[str, Any] = {}
            for d in (sg, plain):
                n = d.name
                out[f"file in {n}"] = outcome(try_open, d / "f", os.O_CREAT | os.O_WRONLY, 0o2775)
                out[f"mkdir in {n}"] = outcome(os.mkdir, d / "d", 0o775)
                out[f"fifo in {n}"] = outcome(os.mkfifo, d / "p", 0o2777)
                out[f"chardev in {n}"] = outcome(os.mknod, d / "c", 0o666 | stat.S_IFCHR,
                                                 os.makedev(1, 3))
                out[f"symlink in {n}"] = outcome(os.symlink, "f", d / "l")
            return out

        out = as_nobody(actions)
        for d in (sg, plain):
            for name in ("f", "d", "p", "l"):
                st = os.lstat(d / name)
                out[f"{d.name}/{name}"] = (oct(st.st_mode), st.st_uid, st.st_gid)
        return out

    r = compare(roots, scenario)
    assert r["chardev in sgid"] == r["chardev in plain"] == "EPERM"
    # a set-group-ID directory gives its group; its own bit only to directories, and a
    # file's set-group-ID bit is dropped for a creator outside that group
    assert r["sgid/f"] == (oct(stat.S_IFREG | 0o775), NOBODY, 0)
    assert r["sgid/d"] == (oct(stat.S_IFDIR | 0o2775), NOBODY, 0)
    assert r["plain/f"] == (oct(stat.S_IFREG | 0o2775), NOBODY, NOGROUP)
    assert r["plain/d"] == (oct(stat.S_IFDIR | 0o775), NOBODY, NOGROUP)
    assert r["sgid/l"][1:] == (NOBODY, 0) and r["plain/l"][1:] == (NOBODY, NOGROUP)


# --------------------------------------------------------------------------
# .zsfs: owner-only writes, nothing to see but counters
# --------------------------------------------------------------------------

KNOBS = ("mem_limit", "compact_threshold", "compact_interval", "mem_used_max")


def _control_state(z: Path) -> dict[str, Any]:
    state = {name: (z / name).read_text() for name in KNOBS}
    stats = dict(line.split(":", 1) for line in (z / "stats").read_text().splitlines())
    state["compactions_manual"] = stats["compactions_manual"].strip()
    state["listing"] = sorted(os.listdir(z))
    state["modes"] = {n: (mode_of(z / n), owner_of(z / n)) for n in os.listdir(z)}
    state["dir"] = (mode_of(z), owner_of(z))
    return state


def test_control_files_are_written_by_the_owner_only(mount_zsfs, as_nobody, run_as_nobody):
    m = mount_zsfs("allow_other")
    z = m.path / ".zsfs"
    files = sorted(os.listdir(z))
    assert {"stats", "compact", "mem_limit", "mem_used_max", "compact_threshold",
            "compact_interval"} <= set(files)
    before = _control_state(z)
    assert before["dir"] == ("0o755", (0, 0))

    def actions() -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in files:
            p = z / name
            value = b"1\n" if name != "mem_limit" else b"1M\n"
            out[f"{name}: write"] = outcome(write, p, value)
            out[f"{name}: O_RDWR"] = outcome(try_open, p, os.O_RDWR)
            out[f"{name}: O_TRUNC"] = outcome(try_open, p, os.O_WRONLY | os.O_TRUNC)
            out[f"{name}: truncate"] = outcome(os.truncate, p, 0)
            out[f"{name}: chmod"] = outcome(os.chmod, p, 0o666)
            out[f"{name}: chown"] = outcome(os.chown, p, NOBODY, NOGROUP)
            out[f"{name}: utime now"] = outcome(os.utime, p)
            out[f"{name}: utime explicit"] = outcome(os.utime, p, (1, 1))
            out[f"{name}: setxattr"] = outcome(os.setxattr, p, "user.x", b"1")
            out[f"{name}: unlink"] = outcome(os.unlink, p)
            out[f"{name}: rename"] = outcome(os.rename, p, z / "x")
            out[f"{name}: rename out"] = outcome(os.rename, p, m.path / "x")
            out[f"{name}: link out"] = outcome(os.link, p, m.path / "x")
        out["read compact"] = outcome(read, z / "compact")
        out["create"] = outcome(try_open, z / "new", os.O_CREAT | os.O_WRONLY)
        out["mkdir"] = outcome(os.mkdir, z / "new")
        out["symlink"] = outcome(os.symlink, "stats", z / "new")
        out["fifo"] = outcome(os.mkfifo, z / "new")
        out["rename dir"] = outcome(os.rename, z, m.path / "x")
        out["rmdir"] = outcome(os.rmdir, z)
        out["chmod dir"] = outcome(os.chmod, z, 0o777)
        out["replace dir"] = outcome(lambda: (os.mkdir(m.path / "mine"),
                                              os.rename(m.path / "mine", z)))
        out["setxattr dir"] = outcome(os.setxattr, z, "user.x", b"1")
        out["read stats"] = outcome(lambda: b"orig_data_size:" in read(z / "stats"))
        return out

    r = as_nobody(actions)
    for name in files:
        for what in ("write", "O_RDWR", "O_TRUNC", "truncate", "utime now", "setxattr",
                     "unlink", "rename", "rename out"):
            assert r[f"{name}: {what}"] == "EACCES", (name, what)
        for what in ("chmod", "chown", "utime explicit", "link out"):
            assert r[f"{name}: {what}"] == "EPERM", (name, what)
    assert r["read compact"] == r["create"] == r["mkdir"] == r["symlink"] == "EACCES"
    assert r["fifo"] == r["setxattr dir"] == "EACCES"
    assert r["rename dir"] == r["rmdir"] == r["chmod dir"] == r["replace dir"] == "EPERM"
    assert r["read stats"] is True
    for cmd in ("echo 1 > compact", "echo 1G > mem_limit", "echo 0 > mem_used_max",
                "printf 0 > compact_threshold", ": > compact_interval"):
        p = run_as_nobody(["sh", "-c", f"cd {z} && {cmd}"])
        assert p.returncode != 0 and "Permission denied" in p.stderr, (cmd, p)
    assert _control_state(z) == before          # nothing changed, nothing compacted
    assert sorted(os.listdir(m.path)) == [".zsfs", "mine"]
    # the owner still writes
    write(z / "mem_limit", b"1M\n")
    assert (z / "mem_limit").read_text() == f"{1 << 20}\n"


def test_control_files_show_no_names_or_contents(mount_zsfs, as_nobody):
    """Nothing under .zsfs tells nobody the names, contents, xattrs or link targets
    of files it cannot reach: it shows counters only."""
    m = mount_zsfs("allow_other")
    z = m.path / ".zsfs"
    secret_name = "s3cr3t-n4me-Q7"
    secret_data = b"TOP-SECRET-CONTENT-" * 700 + b"K9"     # many chunks of it
    private = make_dir(m.path / "private-Zq", 0o700)
    make_file(private / secret_name, 0o600, data=secret_data)
    os.setxattr(private / secret_name, "user.hidden", b"XATTR-SECRET-V4L")
    os.symlink("LINK-SECRET-T4RGET", private / "lnk")
    os.mkdir(private / "SUBDIR-SECRET-D1R")
    needles = [secret_name.encode(), b"TOP-SECRET", b"XATTR-SECRET", b"LINK-SECRET",
               b"SUBDIR-SECRET", b"private-Zq"]
    fd = os.open(private / secret_name, os.O_RDONLY)   # held open, and in use
    try:
        os.fsync(fd)

        def look() -> dict[str, Any]:
            out: dict[str, Any] = {"listing": sorted(os.listdir(z))}
            out["contents"] = {}
            for name in out["listing"]:
                out["contents"][name] = outcome(read, z / name)
                out[f"{name} xattrs"] = outcome(os.listxattr, z / name)
                out[f"{name} getxattr"] = outcome(os.getxattr, z / name, "user.hidden")
            for name in (secret_name, "private-Zq", "lnk", "..", "."):
                out[f"lookup {name}"] = outcome(lambda p: stat.S_IFMT(os.stat(p).st_mode), z / name)
            out["via .."] = outcome(os.stat, z / ".." / "private-Zq" / secret_name)
            out["dotdot listing"] = sorted(os.listdir(z / ".."))
            out["private"] = outcome(os.listdir, m.path / "private-Zq")
            return out

        seen = as_nobody(look)
    finally:
        os.close(fd)
    stats = dict(line.split(":", 1) for line in seen["contents"]["stats"].decode().splitlines())
    assert int(stats["files"]) >= 1 and int(stats["orig_data_size"]) >= len(secret_data)
    # write-only files (compact, as zram's) cannot even be read: by their mode
    unreadable = {n for n in seen["listing"] if not os.stat(z / n).st_mode & stat.S_IROTH}
    assert "compact" in unreadable
    for name in seen["listing"]:
        assert (seen["contents"][name] == "EACCES") == (name in unreadable), name
    assert seen["private"] == seen["via .."] == "EACCES"
    assert seen[f"lookup {secret_name}"] == seen["lookup private-Zq"] == "ENOENT"
    assert seen["lookup lnk"] == "ENOENT"
    assert seen["lookup .."] == stat.S_IFDIR and seen["lookup ."] == stat.S_IFDIR
    assert seen["dotdot listing"] == [".zsfs", "private-Zq"]
    for name in seen["listing"]:
        assert seen[f"{name} xattrs"] == [], name
        assert seen[f"{name} getxattr"] == ("EACCES" if name in unreadable else "ENODATA"), name
    everything = repr(seen["contents"]).encode()
    for needle in needles:
        assert needle not in everything, needle


def test_without_allow_other_nobody_gets_nothing(mount_zsfs, as_nobody):
    m = mount_zsfs()
    (m.path / "f").write_bytes(b"data")
    os.chmod(m.path / "f", 0o666)
    got = as_nobody(lambda: {
        "stat root": outcome(os.stat, m.path),
        "list root": outcome(os.listdir, m.path),
        "read f": outcome(read, m.path / "f"),
        "stats": outcome(read, m.path / ".zsfs" / "stats"),
    })
    assert got == {"stat root": "EACCES", "list root": "EACCES", "read f": "EACCES",
                   "stats": "EACCES"}
