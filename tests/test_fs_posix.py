"""POSIX namespace / metadata behaviour of a mounted zsfs (pjdfstest-style).

Every expectation here was checked against Linux tmpfs: zsfs promises tmpfs
semantics, so each errno must be the one tmpfs gives.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import random
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

try:
    from conftest import (CONTROL_NAME, drop_cache, expect_errno, read_file, root_entries,
                          skip_or_fail, wait_for)
except ImportError:  # tests/ imported as a package
    from tests.conftest import (CONTROL_NAME, drop_cache, expect_errno, read_file,
                                root_entries, skip_or_fail, wait_for)

NOBODY, NOGROUP = 65534, 65534
AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2

libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def _check(ret, *paths):
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), *[os.fspath(p) for p in paths[:1]])
    return ret


libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                           ctypes.c_uint]
libc.renameat2.restype = ctypes.c_int


def renameat2(old, new, flags):
    _check(libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags),
           old)


class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


libc.utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(Timespec),
                           ctypes.c_int]
libc.utimensat.restype = ctypes.c_int


def utimensat(path, atime, mtime):
    """atime/mtime: int ns, or the strings 'now' / 'omit'."""
    def ts(v):
        if v == "now":
            return Timespec(0, UTIME_NOW)
        if v == "omit":
            return Timespec(0, UTIME_OMIT)
        return Timespec(v // 10**9, v % 10**9)
    times = (Timespec * 2)(ts(atime), ts(mtime))
    _check(libc.utimensat(AT_FDCWD, os.fsencode(path), times, 0), path)


for _fn in ("getxattr", "listxattr"):
    getattr(libc, _fn).restype = ctypes.c_ssize_t
libc.getxattr.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
libc.listxattr.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]


def raw_getxattr(path, name, size):
    buf = ctypes.create_string_buffer(max(size, 1))
    n = _check(libc.getxattr(os.fsencode(path), name.encode(), buf if size else None, size),
               path)
    return n, buf.raw[:n] if size else b""


def raw_listxattr(path, size):
    buf = ctypes.create_string_buffer(max(size, 1))
    n = _check(libc.listxattr(os.fsencode(path), buf if size else None, size), path)
    return n, buf.raw[:n] if size else b""


def touch(p, data=b"", mode=0o644):
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        if data:
            os.write(fd, data)
    finally:
        os.close(fd)
    return Path(p)


TICK = 0.03  # sleep between operations whose ctime must differ


# =============================================================================
# open(2) / creat / basic errors
# =============================================================================

def test_open_flags(mnt):
    f = mnt / "f"
    touch(f, b"hello world")
    d = mnt / "d"
    d.mkdir()

    expect_errno(errno.EEXIST, os.open, f, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    expect_errno(errno.EEXIST, os.open, d, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    os.symlink("nonexistent-target", mnt / "dangling")
    # O_EXCL does not follow symlinks, even dangling ones
    expect_errno(errno.EEXIST, os.open, mnt / "dangling",
                 os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    assert not (mnt / "nonexistent-target").exists()

    # O_CREAT without O_EXCL opens the existing file without truncating
    fd = os.open(f, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)
    assert f.read_bytes() == b"hello world"
    assert stat.S_IMODE(f.stat().st_mode) == 0o644  # mode of O_CREAT ignored

    # O_TRUNC
    fd = os.open(f, os.O_WRONLY | os.O_TRUNC)
    assert os.fstat(fd).st_size == 0
    os.close(fd)
    assert f.stat().st_size == 0
    assert read_file(f) == b""

    # O_DIRECTORY on a file / open dirs for write
    expect_errno(errno.ENOTDIR, os.open, f, os.O_RDONLY | os.O_DIRECTORY)
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    os.close(fd)
    expect_errno(errno.EISDIR, os.open, d, os.O_WRONLY)
    expect_errno(errno.EISDIR, os.open, d, os.O_RDWR)
    expect_errno(errno.EISDIR, os.open, d, os.O_WRONLY | os.O_CREAT, 0o644)
    expect_errno(errno.EISDIR, os.open, mnt, os.O_RDWR)

    # missing files / bad path components
    expect_errno(errno.ENOENT, os.open, mnt / "missing", os.O_RDONLY)
    expect_errno(errno.ENOENT, os.open, mnt / "nodir" / "x", os.O_CREAT | os.O_WRONLY, 0o644)
    expect_errno(errno.ENOTDIR, os.open, f / "x", os.O_RDONLY)
    expect_errno(errno.ENOTDIR, os.open, f / "x", os.O_CREAT | os.O_WRONLY, 0o644)
    expect_errno(errno.ENOTDIR, os.stat, f / "x")

    # O_CREAT through a dangling symlink creates the target
    fd = os.open(mnt / "dangling", os.O_CREAT | os.O_WRONLY, 0o600)
    os.write(fd, b"via link")
    os.close(fd)
    assert (mnt / "nonexistent-target").read_bytes() == b"via link"

    # O_NOFOLLOW on a symlink
    expect_errno(errno.ELOOP, os.open, mnt / "dangling", os.O_RDONLY | os.O_NOFOLLOW)

    # creat() honours the mode (minus umask)
    old = os.umask(0o022)
    try:
        fd = os.open(mnt / "m", os.O_CREAT | os.O_WRONLY, 0o777)
        os.close(fd)
        os.mkdir(mnt / "md", 0o777)
    finally:
        os.umask(old)
    assert stat.S_IMODE((mnt / "m").stat().st_mode) == 0o755
    assert stat.S_IMODE((mnt / "md").stat().st_mode) == 0o755
    old = os.umask(0)
    try:
        fd = os.open(mnt / "m2", os.O_CREAT | os.O_WRONLY, 0o640)
        os.close(fd)
    finally:
        os.umask(old)
    st = (mnt / "m2").stat()
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
    assert st.st_nlink == 1 and st.st_size == 0


def test_fd_errors(mnt):
    f = touch(mnt / "f", b"abc")
    d = mnt / "d"
    d.mkdir()
    fd = os.open(f, os.O_RDONLY)
    try:
        expect_errno(errno.EBADF, os.write, fd, b"x")
        expect_errno(errno.EINVAL, os.ftruncate, fd, 0)
    finally:
        os.close(fd)
    fd = os.open(f, os.O_WRONLY)
    try:
        expect_errno(errno.EBADF, os.read, fd, 1)
    finally:
        os.close(fd)
    fd = os.open(d, os.O_RDONLY)
    try:
        expect_errno(errno.EISDIR, os.read, fd, 10)
    finally:
        os.close(fd)
    expect_errno(errno.EISDIR, os.truncate, d, 0)
    expect_errno(errno.EINVAL, os.truncate, f, -1)
    expect_errno(errno.ENOENT, os.truncate, mnt / "missing", 0)
    assert f.read_bytes() == b"abc"


def test_mkdir_rmdir_unlink_errors(mnt):
    f = touch(mnt / "f")
    d = mnt / "d"
    os.mkdir(d)
    st = d.stat()
    assert stat.S_ISDIR(st.st_mode) and st.st_nlink == 2
    assert os.listdir(d) == []

    expect_errno(errno.EEXIST, os.mkdir, d)
    expect_errno(errno.EEXIST, os.mkdir, f)
    expect_errno(errno.EEXIST, os.mkdir, mnt)
    expect_errno(errno.ENOENT, os.mkdir, mnt / "no" / "x")
    expect_errno(errno.ENOTDIR, os.mkdir, f / "x")

    touch(d / "inner")
    expect_errno(errno.ENOTEMPTY, os.rmdir, d)
    expect_errno(errno.ENOTDIR, os.rmdir, f)
    expect_errno(errno.ENOENT, os.rmdir, mnt / "missing")
    expect_errno(errno.ENOTDIR, os.rmdir, f / "x")
    expect_errno(errno.EINVAL, os.rmdir, str(d) + "/.")
    expect_errno(errno.ENOTEMPTY, os.rmdir, str(d) + "/..")

    expect_errno(errno.EISDIR, os.unlink, d)
    expect_errno(errno.ENOENT, os.unlink, mnt / "missing")
    expect_errno(errno.ENOTDIR, os.unlink, f / "x")

    os.unlink(d / "inner")
    expect_errno(errno.ENOENT, os.stat, d / "inner")
    os.rmdir(d)
    expect_errno(errno.ENOENT, os.stat, d)
    os.unlink(f)
    assert root_entries(mnt) == []

    # symlink to a dir is not a dir for rmdir; unlink removes the link only
    os.mkdir(d)
    os.symlink("d", mnt / "ld")
    expect_errno(errno.ENOTDIR, os.rmdir, mnt / "ld")
    os.unlink(mnt / "ld")
    assert d.is_dir()

    # nested creation / removal
    p = mnt
    for i in range(20):
        p = p / f"n{i}"
        os.mkdir(p)
    touch(p / "leaf", b"deep")
    assert (mnt.joinpath(*[f"n{i}" for i in range(20)]) / "leaf").read_bytes() == b"deep"
    for _ in range(20):
        for e in os.listdir(p):
            os.unlink(p / e)
        os.rmdir(p)
        p = p.parent
    assert root_entries(mnt) == ["d"]


def test_name_length_limits(mnt):
    ok = "a" * 255
    long = "b" * 256
    target = touch(mnt / "t", b"x")
    d = mnt / "d"
    d.mkdir()

    # 255 bytes: everything works
    touch(mnt / ok, b"255")
    assert (mnt / ok).read_bytes() == b"255"
    assert ok in os.listdir(mnt)
    os.mkdir(d / ok)
    os.symlink("t", d / ("s" * 255))
    os.link(target, d / ("l" * 255))
    os.rename(mnt / ok, d / ("r" * 255))
    assert (d / ("r" * 255)).read_bytes() == b"255"
    os.mkfifo(d / ("f" * 255))
    # multi-byte UTF-8 name of exactly 255 bytes
    mb = "é" * 127 + "x"
    assert len(mb.encode()) == 255
    touch(d / mb)
    assert mb in os.listdir(d)

    # 256 bytes: ENAMETOOLONG from every entry point
    expect_errno(errno.ENAMETOOLONG, os.open, mnt / long, os.O_CREAT | os.O_WRONLY, 0o644)
    expect_errno(errno.ENAMETOOLONG, os.mkdir, mnt / long)
    expect_errno(errno.ENAMETOOLONG, os.symlink, "t", mnt / long)
    expect_errno(errno.ENAMETOOLONG, os.link, target, mnt / long)
    expect_errno(errno.ENAMETOOLONG, os.rename, target, mnt / long)
    expect_errno(errno.ENAMETOOLONG, os.mkfifo, mnt / long)
    expect_errno(errno.ENAMETOOLONG, os.stat, mnt / long)
    expect_errno(errno.ENAMETOOLONG, os.lstat, d / long)
    expect_errno(errno.ENAMETOOLONG, os.open, mnt / long, os.O_RDONLY)
    expect_errno(errno.ENAMETOOLONG, os.unlink, mnt / long)
    expect_errno(errno.ENAMETOOLONG, renameat2, target, mnt / long, RENAME_NOREPLACE)
    mb256 = "é" * 128
    expect_errno(errno.ENAMETOOLONG, os.open, mnt / mb256, os.O_CREAT | os.O_WRONLY, 0o644)
    assert target.read_bytes() == b"x"
    assert root_entries(mnt) == ["d", "t"]


def test_odd_names(mnt):
    names = ["with space", "new\nline", "tab\tname", "ü-ñicode-名前", "-dash", ".hidden",
             "...", "a" * 100, "back\\slash", "q?*[]", "\x01ctrl", "trailing. "]
    for n in names:
        touch(mnt / n, n.encode())
    assert root_entries(mnt) == sorted(names)
    for n in names:
        assert (mnt / n).read_bytes() == n.encode()
    # arbitrary non-UTF-8 bytes are valid names too
    raw = os.fsencode(str(mnt)) + b"/\xff\xfe-raw"
    fd = os.open(raw, os.O_CREAT | os.O_WRONLY, 0o644)
    os.close(fd)
    assert b"\xff\xfe-raw" in os.listdir(os.fsencode(str(mnt)))
    os.unlink(raw)
    # every byte value except NUL and "/" is allowed in a name
    every = bytes(b for b in range(1, 256) if b != ord("/"))
    root_b = os.fsencode(str(mnt))
    for part in (every[:127], every[127:]):
        fd = os.open(root_b + b"/" + part, os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, part)
        os.close(fd)
    listed = set(os.listdir(root_b))
    for part in (every[:127], every[127:]):
        assert part in listed
        with open(root_b + b"/" + part, "rb") as fh:
            assert fh.read() == part
        os.unlink(root_b + b"/" + part)
    # names are case-sensitive
    touch(mnt / "Case", b"upper")
    touch(mnt / "case", b"lower")
    assert (mnt / "Case").read_bytes() == b"upper"
    assert (mnt / "case").read_bytes() == b"lower"


# =============================================================================
# symlinks / hard links / special files
# =============================================================================

def test_symlinks(mnt):
    f = touch(mnt / "file", b"data")
    os.mkdir(mnt / "dir")
    os.symlink("file", mnt / "rel")
    os.symlink(str(f), mnt / "abs")
    os.symlink("../file", mnt / "dir" / "up")
    os.symlink("dir", mnt / "dirlink")
    os.symlink("nowhere/at/all", mnt / "dangling")

    for link, target in [("rel", "file"), ("abs", str(f)), ("dir/up", "../file"),
                         ("dangling", "nowhere/at/all")]:
        assert os.readlink(mnt / link) == target
        st = os.lstat(mnt / link)
        assert stat.S_ISLNK(st.st_mode)
        assert st.st_size == len(os.fsencode(target))
        assert stat.S_IMODE(st.st_mode) == 0o777
    assert (mnt / "rel").read_bytes() == b"data"
    assert (mnt / "abs").read_bytes() == b"data"
    assert (mnt / "dir" / "up").read_bytes() == b"data"
    assert os.stat(mnt / "rel").st_ino == f.stat().st_ino
    assert os.listdir(mnt / "dirlink") == ["up"]
    assert (mnt / "dirlink" / "up").read_bytes() == b"data"

    expect_errno(errno.ENOENT, os.stat, mnt / "dangling")
    expect_errno(errno.EINVAL, os.readlink, f)
    expect_errno(errno.EINVAL, os.readlink, mnt / "dir")
    expect_errno(errno.ENOENT, os.readlink, mnt / "missing")
    expect_errno(errno.EEXIST, os.symlink, "x", mnt / "rel")
    expect_errno(errno.EEXIST, os.symlink, "x", f)
    expect_errno(errno.ENOENT, os.symlink, "x", mnt / "nodir" / "l")
    expect_errno(errno.ENOENT, os.symlink, "", mnt / "empty-target")

    # symlink loop
    os.symlink("loop2", mnt / "loop1")
    os.symlink("loop1", mnt / "loop2")
    expect_errno(errno.ELOOP, os.stat, mnt / "loop1")

    # non-UTF-8 target bytes are stored verbatim
    os.symlink(b"\xff\xfe/odd", os.fsencode(str(mnt / "rawlink")))
    assert os.readlink(os.fsencode(str(mnt / "rawlink"))) == b"\xff\xfe/odd"

    # a symlink's own times/owner: lchown works on the link, not the target
    os.lchown(mnt / "rel", 1234, 4321)
    assert os.lstat(mnt / "rel").st_uid == 1234
    assert f.stat().st_uid == 0
    # unlink removes the link, not the target
    os.unlink(mnt / "rel")
    assert f.read_bytes() == b"data"


def test_symlink_target_max_length(mnt):
    t4095 = ("x" * 254 + "/") * 17
    t4095 = t4095[:4095]
    assert len(t4095) == 4095
    os.symlink(t4095, mnt / "long")
    assert os.readlink(mnt / "long") == t4095
    assert os.lstat(mnt / "long").st_size == 4095
    expect_errno(errno.ENAMETOOLONG, os.symlink, "y" * 4096, mnt / "toolong")
    assert not os.path.lexists(mnt / "toolong")
    # an ordinary length-1 target too
    os.symlink("z", mnt / "short")
    assert os.readlink(mnt / "short") == "z"


def test_hard_links(mnt):
    a = mnt / "a"
    b = mnt / "sub" / "b"
    c = mnt / "other" / "deep" / "c"
    (mnt / "sub").mkdir()
    (mnt / "other" / "deep").mkdir(parents=True)
    touch(a, b"shared content")
    os.link(a, b)
    os.link(b, c)
    ino = a.stat().st_ino
    for p in (a, b, c):
        st = p.stat()
        assert st.st_ino == ino and st.st_nlink == 3
    # write through one name is seen through the others
    with open(c, "r+b") as fh:
        fh.write(b"SHARED")
    assert a.read_bytes() == b"SHARED content"
    assert read_file(b) == b"SHARED content"

    expect_errno(errno.EEXIST, os.link, a, b)
    expect_errno(errno.EEXIST, os.link, a, mnt / "sub")
    expect_errno(errno.ENOENT, os.link, mnt / "missing", mnt / "x")
    expect_errno(errno.ENOENT, os.link, a, mnt / "nodir" / "x")
    expect_errno(errno.EPERM, os.link, mnt / "sub", mnt / "sublink")
    expect_errno(errno.EPERM, os.link, mnt, mnt / "rootlink")

    os.unlink(a)
    assert b.stat().st_nlink == 2
    assert read_file(c) == b"SHARED content"
    os.unlink(c)
    st = b.stat()
    assert st.st_nlink == 1 and st.st_ino == ino
    assert read_file(b) == b"SHARED content"

    # hard link to a symlink links the symlink itself
    os.symlink("sub/b", mnt / "sl")
    os.link(mnt / "sl", mnt / "sl2", follow_symlinks=False)
    assert os.readlink(mnt / "sl2") == "sub/b"
    assert os.lstat(mnt / "sl").st_nlink == 2
    assert os.lstat(mnt / "sl2").st_ino == os.lstat(mnt / "sl").st_ino
    # hard link of a fifo
    os.mkfifo(mnt / "fifo")
    os.link(mnt / "fifo", mnt / "fifo2")
    assert os.lstat(mnt / "fifo2").st_nlink == 2
    assert stat.S_ISFIFO(os.lstat(mnt / "fifo2").st_mode)


def test_many_hard_links(mnt):
    f = touch(mnt / "target", b"linked")
    (mnt / "links").mkdir()
    for i in range(1000):
        os.link(f, mnt / "links" / f"l{i}")
    assert f.stat().st_nlink == 1001
    assert len(os.listdir(mnt / "links")) == 1000
    for i in range(0, 1000, 2):
        os.unlink(mnt / "links" / f"l{i}")
    assert f.stat().st_nlink == 501
    os.unlink(f)
    st = os.stat(mnt / "links" / "l1")
    assert st.st_nlink == 500
    assert read_file(mnt / "links" / "l999") == b"linked"


def test_inode_numbers_stay_unique_while_freed_ones_are_reused(mnt):
    """zsfs reuses the numbers of inodes gone for good (no name, not open, forgotten
    by the kernel): a new file never gets the number of a live one, and an unlinked
    file still open keeps its number and its data."""
    d = mnt / "d"
    d.mkdir()
    with open(d / "open-unlinked", "w+b") as kept:
        kept.write(b"still here")
        kept.flush()
        kept_ino = os.fstat(kept.fileno()).st_ino
        os.unlink(d / "open-unlinked")
        first = {i: touch(d / f"f{i}", b"f%d" % i).stat().st_ino for i in range(400)}
        assert len(set(first.values()) | {kept_ino}) == 401
        for i in range(0, 400, 2):
            os.unlink(d / f"f{i}")
        live = {first[i] for i in range(1, 400, 2)} | {kept_ino, d.stat().st_ino, mnt.stat().st_ino}
        new = {i: touch(d / f"g{i}", b"g%d" % i).stat().st_ino for i in range(400)}
        assert len(set(new.values())) == 400 and not set(new.values()) & live
        for i in range(1, 400, 2):
            assert read_file(d / f"f{i}") == b"f%d" % i and (d / f"f{i}").stat().st_ino == first[i]
        for i in range(400):
            assert read_file(d / f"g{i}") == b"g%d" % i
        kept.seek(0)
        assert kept.read() == b"still here" and os.fstat(kept.fileno()).st_ino == kept_ino


def test_rename_over_open_and_linked_targets(mnt):
    a = touch(mnt / "a", b"new contents")
    b = touch(mnt / "b", b"old contents")
    fd = os.open(b, os.O_RDWR)
    try:
        os.rename(a, b)
        # the replaced inode lives on through the fd
        assert os.fstat(fd).st_nlink == 0
        drop_cache(fd)
        assert os.pread(fd, 100, 0) == b"old contents"
        os.pwrite(fd, b"OLD", 0)
        assert os.pread(fd, 3, 0) == b"OLD"
    finally:
        os.close(fd)
    assert read_file(b) == b"new contents"
    # replacing one name of a hard-linked file leaves the other name alone
    c = touch(mnt / "c", b"c data")
    os.link(c, mnt / "c2")
    d = touch(mnt / "d", b"d data")
    os.rename(d, c)
    assert read_file(c) == b"d data"
    st = os.stat(mnt / "c2")
    assert st.st_nlink == 1 and read_file(mnt / "c2") == b"c data"
    # replacing an empty directory that is open
    (mnt / "src").mkdir()
    (mnt / "dst").mkdir()
    dfd = os.open(mnt / "dst", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.rename(mnt / "src", mnt / "dst")
        assert os.listdir(dfd) == []
        expect_errno(errno.ENOENT, os.open, f"/proc/self/fd/{dfd}/x",
                     os.O_CREAT | os.O_WRONLY, 0o644)
    finally:
        os.close(dfd)
    assert (mnt / "dst").is_dir() and not (mnt / "src").exists()


def test_o_tmpfile(mnt):
    try:
        fd = os.open(mnt, os.O_TMPFILE | os.O_RDWR, 0o600)
    except OSError as e:
        assert e.errno in (errno.EOPNOTSUPP, errno.EISDIR), e
        touch(mnt / "alive", b"ok")
        assert read_file(mnt / "alive") == b"ok"
        return
    try:
        os.write(fd, b"anonymous")
        assert os.fstat(fd).st_nlink == 0
        assert root_entries(mnt) == []
        drop_cache(fd)
        assert os.pread(fd, 100, 0) == b"anonymous"
    finally:
        os.close(fd)


def test_directory_link_count(mnt):
    base = mnt.stat().st_nlink  # (the root's own count is checked in test_fs_cli_mount)
    a = mnt / "a"
    a.mkdir()
    assert mnt.stat().st_nlink == base + 1
    assert a.stat().st_nlink == 2
    for n in ("b", "c", "d"):
        (a / n).mkdir()
    touch(a / "file")
    os.symlink("b", a / "link")
    assert a.stat().st_nlink == 5  # files and symlinks do not count
    os.rmdir(a / "d")
    assert a.stat().st_nlink == 4
    os.rename(a / "c", mnt / "c")
    assert a.stat().st_nlink == 3
    assert mnt.stat().st_nlink == base + 2
    os.rename(mnt / "c", a / "b" / "c")
    assert mnt.stat().st_nlink == base + 1
    assert (a / "b").stat().st_nlink == 3
    assert a.stat().st_nlink == 3
    # a renamed directory's ".." follows it
    assert os.stat(a / "b" / "c" / "..").st_ino == (a / "b").stat().st_ino
    assert os.stat(a / "..").st_ino == mnt.stat().st_ino


def test_fifo(mnt):
    p = mnt / "fifo"
    os.mkfifo(p, 0o640)
    st = os.lstat(p)
    assert stat.S_ISFIFO(st.st_mode)
    assert st.st_size == 0
    expect_errno(errno.EEXIST, os.mkfifo, p)
    r = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
    try:
        w = os.open(p, os.O_WRONLY)
        try:
            payload = bytes(range(256)) * 64
            assert os.write(w, payload) == len(payload)
            got = b""
            while len(got) < len(payload):
                got += os.read(r, 65536)
            assert got == payload
        finally:
            os.close(w)
    finally:
        os.close(r)
    # also via a writer in another process
    proc = subprocess.Popen(["sh", "-c", f"printf 'through the pipe' > '{p}'"])
    with open(p, "rb") as fh:
        assert fh.read() == b"through the pipe"
    assert proc.wait(timeout=10) == 0
    assert os.lstat(p).st_size == 0
    os.unlink(p)
    assert not os.path.lexists(p)


def test_device_nodes(mnt):
    chr_dev = os.makedev(1, 3)
    blk_dev = os.makedev(7, 200)
    big_dev = os.makedev(259, 123456)
    os.mknod(mnt / "null", stat.S_IFCHR | 0o666, chr_dev)
    os.mknod(mnt / "loop", stat.S_IFBLK | 0o660, blk_dev)
    os.mknod(mnt / "big", stat.S_IFCHR | 0o600, big_dev)
    os.mknod(mnt / "reg", stat.S_IFREG | 0o644)
    os.mknod(mnt / "fifo", stat.S_IFIFO | 0o600)
    st = os.lstat(mnt / "null")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == chr_dev
    assert stat.S_IMODE(st.st_mode) == 0o666 & ~_umask()
    st = os.lstat(mnt / "loop")
    assert stat.S_ISBLK(st.st_mode) and st.st_rdev == blk_dev
    st = os.lstat(mnt / "big")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == big_dev
    assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (259, 123456)
    st = os.lstat(mnt / "reg")
    assert stat.S_ISREG(st.st_mode) and st.st_size == 0
    assert stat.S_ISFIFO(os.lstat(mnt / "fifo").st_mode)
    expect_errno(errno.EEXIST, os.mknod, mnt / "null", stat.S_IFCHR | 0o600, chr_dev)
    # rdev survives rename and hard link
    os.rename(mnt / "loop", mnt / "loop2")
    os.link(mnt / "loop2", mnt / "loop3")
    assert os.lstat(mnt / "loop3").st_rdev == blk_dev
    # d_type in readdir
    types = {e.name: e for e in os.scandir(mnt)}
    assert not types["null"].is_file() and not types["null"].is_dir()
    assert types["reg"].is_file()


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


def test_unix_socket(mnt):
    path = mnt / "sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        srv.bind(str(path))
        srv.listen(1)
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        assert "sock" in os.listdir(mnt)
        cli = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            cli.connect(str(path))
            conn, _ = srv.accept()
            with conn:
                cli.sendall(b"ping over zsfs")
                assert conn.recv(100) == b"ping over zsfs"
                conn.sendall(b"pong")
                assert cli.recv(100) == b"pong"
        finally:
            cli.close()
        # binding to an existing name fails
        s2 = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            expect_errno(errno.EADDRINUSE, s2.bind, str(path))
        finally:
            s2.close()
    finally:
        srv.close()
    os.unlink(path)
    assert not os.path.lexists(path)
    # datagram socket too
    d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    d2 = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        d.bind(str(mnt / "dgram"))
        d2.sendto(b"dg", str(mnt / "dgram"))
        assert d.recv(10) == b"dg"
    finally:
        d.close()
        d2.close()


# =============================================================================
# rename
# =============================================================================

def test_rename_files(mnt):
    a = touch(mnt / "a", b"AAA")
    b = touch(mnt / "b", b"BBBBBB")
    ino_a = a.stat().st_ino
    os.rename(a, b)  # file over file
    assert not a.exists()
    assert b.read_bytes() == b"AAA"
    assert b.stat().st_ino == ino_a
    assert root_entries(mnt) == ["b"]

    os.rename(b, b)  # same name: no-op
    assert b.read_bytes() == b"AAA"

    # two hard links to the same inode: rename is a no-op, both names stay
    os.link(b, mnt / "b2")
    os.rename(b, mnt / "b2")
    assert b.exists() and (mnt / "b2").exists()
    assert b.stat().st_nlink == 2

    # move across directories, with and without replacement
    (mnt / "d1").mkdir()
    (mnt / "d2").mkdir()
    touch(mnt / "d2" / "victim", b"old")
    os.rename(mnt / "b2", mnt / "d1" / "moved")
    os.rename(mnt / "d1" / "moved", mnt / "d2" / "victim")
    assert (mnt / "d2" / "victim").read_bytes() == b"AAA"
    assert os.listdir(mnt / "d1") == []
    assert b.stat().st_nlink == 2

    # errors
    expect_errno(errno.ENOENT, os.rename, mnt / "missing", mnt / "x")
    expect_errno(errno.ENOENT, os.rename, b, mnt / "nodir" / "x")
    expect_errno(errno.ENOTDIR, os.rename, b, b / "x")
    expect_errno(errno.ENOTDIR, os.rename, b / "x", mnt / "y")
    assert b.read_bytes() == b"AAA"

    # symlinks are renamed, not followed
    os.symlink("b", mnt / "sl")
    os.rename(mnt / "sl", mnt / "d1" / "sl")
    assert os.readlink(mnt / "d1" / "sl") == "b"
    assert b.exists()

    # rename of a file keeps an open fd working
    fd = os.open(b, os.O_RDWR)
    try:
        os.rename(b, mnt / "d1" / "renamed-open")
        os.pwrite(fd, b"Z", 0)
        assert os.pread(fd, 3, 0) == b"ZAA"
    finally:
        os.close(fd)
    assert read_file(mnt / "d1" / "renamed-open") == b"ZAA"


def test_rename_directories(mnt):
    src = mnt / "src"
    src.mkdir()
    touch(src / "f", b"in src")
    (src / "sub").mkdir()
    empty = mnt / "empty"
    empty.mkdir()
    full = mnt / "full"
    full.mkdir()
    touch(full / "x")
    f = touch(mnt / "file", b"plain")

    expect_errno(errno.ENOTEMPTY, os.rename, src, full)
    expect_errno(errno.EISDIR, os.rename, f, empty)
    expect_errno(errno.ENOTDIR, os.rename, src, f)
    expect_errno(errno.EINVAL, os.rename, src, src / "sub" / "inside")
    expect_errno(errno.EINVAL, os.rename, src, src / "inside")
    # nothing changed
    assert (src / "f").read_bytes() == b"in src"
    assert f.read_bytes() == b"plain"
    assert (full / "x").exists() and empty.is_dir()

    nlink_root = mnt.stat().st_nlink
    os.rename(src, empty)  # dir over empty dir
    assert not src.exists()
    assert (empty / "f").read_bytes() == b"in src"
    assert (empty / "sub").is_dir()
    assert mnt.stat().st_nlink == nlink_root - 1

    # move a directory into another directory; ".." must follow
    os.rename(empty, full / "moved")
    assert os.stat(full / "moved" / "..").st_ino == full.stat().st_ino
    assert full.stat().st_nlink == 3
    assert (full / "moved" / "f").read_bytes() == b"in src"
    os.rename(full / "moved", full / "moved")  # same name no-op
    assert (full / "moved" / "sub").is_dir()
    # rename a dir back to the top while its subdir is someone's cwd-like fd
    dfd = os.open(full / "moved" / "sub", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.rename(full / "moved", mnt / "back")
        touch(f"/proc/self/fd/{dfd}/created-via-fd")
    finally:
        os.close(dfd)
    assert (mnt / "back" / "sub" / "created-via-fd").exists()
    assert root_entries(mnt) == ["back", "file", "full"]


def test_renameat2_noreplace(mnt):
    a = touch(mnt / "a", b"A")
    b = touch(mnt / "b", b"B")
    expect_errno(errno.EEXIST, renameat2, a, b, RENAME_NOREPLACE)
    (mnt / "d").mkdir()
    expect_errno(errno.EEXIST, renameat2, a, mnt / "d", RENAME_NOREPLACE)
    assert a.read_bytes() == b"A" and b.read_bytes() == b"B"
    renameat2(a, mnt / "c", RENAME_NOREPLACE)
    assert not a.exists()
    assert (mnt / "c").read_bytes() == b"A"
    expect_errno(errno.ENOENT, renameat2, a, mnt / "e", RENAME_NOREPLACE)
    expect_errno(errno.EINVAL, renameat2, b, mnt / "x", RENAME_NOREPLACE | RENAME_EXCHANGE)


def test_renameat2_exchange(mnt):
    a = touch(mnt / "a", b"file A")
    d = mnt / "d"
    d.mkdir()
    touch(d / "inside", b"in d")
    (mnt / "p").mkdir()
    b = touch(mnt / "p" / "b", b"file B")
    ino_a, ino_b, ino_d = a.stat().st_ino, b.stat().st_ino, d.stat().st_ino

    renameat2(a, b, RENAME_EXCHANGE)
    assert a.read_bytes() == b"file B" and a.stat().st_ino == ino_b
    assert b.read_bytes() == b"file A" and b.stat().st_ino == ino_a

    # file <-> directory swaps types
    root_nlink = mnt.stat().st_nlink
    p_nlink = (mnt / "p").stat().st_nlink
    renameat2(b, d, RENAME_EXCHANGE)
    assert (mnt / "p" / "b").is_dir()
    assert (mnt / "p" / "b").stat().st_ino == ino_d
    assert (mnt / "p" / "b" / "inside").read_bytes() == b"in d"
    assert d.is_file() and d.read_bytes() == b"file A"
    assert os.stat(mnt / "p" / "b" / "..").st_ino == (mnt / "p").stat().st_ino
    # the directory moved from / into /p: link counts follow
    assert mnt.stat().st_nlink == root_nlink - 1
    assert (mnt / "p").stat().st_nlink == p_nlink + 1
    assert root_entries(mnt) == ["a", "d", "p"]
    assert os.listdir(mnt / "p") == ["b"]

    expect_errno(errno.ENOENT, renameat2, a, mnt / "missing", RENAME_EXCHANGE)
    expect_errno(errno.ENOENT, renameat2, mnt / "missing", a, RENAME_EXCHANGE)
    # exchange a dir with its own subdir is invalid
    expect_errno(errno.EINVAL, renameat2, mnt / "p", mnt / "p" / "b", RENAME_EXCHANGE)
    renameat2(a, a, RENAME_EXCHANGE)
    assert read_file(a) == b"file B"


# =============================================================================
# unlinked but open files
# =============================================================================

def test_unlinked_open_file(mount_zsfs):
    m = mount_zsfs("size=64m")
    mnt = m.path
    sv0 = os.statvfs(mnt)
    f = mnt / "doomed"
    data = os.urandom(8 << 20)
    fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
        used = os.statvfs(mnt)
        assert used.f_bfree < sv0.f_bfree
        os.unlink(f)
        assert not os.path.lexists(f)
        assert "doomed" not in os.listdir(mnt)
        st = os.fstat(fd)
        assert st.st_nlink == 0
        assert st.st_size == len(data)
        # keep using it
        more = os.urandom(1 << 20)
        os.pwrite(fd, more, len(data))
        os.pwrite(fd, b"HEAD", 0)
        drop_cache(fd)
        assert os.pread(fd, 4, 0) == b"HEAD"
        assert os.pread(fd, 100, 4) == data[4:104]
        assert os.pread(fd, len(more), len(data)) == more
        os.ftruncate(fd, 1000)
        assert os.fstat(fd).st_size == 1000
        os.ftruncate(fd, len(data))
        drop_cache(fd)
        assert os.pread(fd, 4096, 1000) == bytes(4096)
        # a new file with the same name is a different file
        touch(f, b"new")
        assert os.pread(fd, 4, 0) == b"HEAD"
        os.unlink(f)
    finally:
        os.close(fd)
    # the space is returned once the last fd is closed (the kernel forgets
    # the inode asynchronously, so poll a little)
    free = wait_for(lambda: os.statvfs(mnt).f_bfree >= sv0.f_bfree - 16, timeout=5)
    assert free, (f"space not freed after closing an unlinked file: f_bfree "
                  f"{os.statvfs(mnt).f_bfree} < {sv0.f_bfree} - 16")
    assert wait_for(lambda: os.statvfs(mnt).f_ffree == sv0.f_ffree, timeout=5), \
        f"inode not freed: f_ffree {os.statvfs(mnt).f_ffree} != {sv0.f_ffree}"


# =============================================================================
# readdir
# =============================================================================

def test_readdir_large_directory(mnt):
    d = mnt / "big"
    d.mkdir()
    names = {f"entry-{i:05d}-{'x' * (i % 37)}" for i in range(3000)}
    for n in names:
        fd = os.open(d / n, os.O_CREAT | os.O_WRONLY, 0o644)
        os.close(fd)
    listed = os.listdir(d)
    assert len(listed) == len(set(listed)), "duplicate entries in readdir"
    assert set(listed) == names
    # again via scandir, with d_type and inode numbers consistent with stat
    seen = {}
    with os.scandir(d) as it:
        for e in it:
            assert e.name not in seen
            seen[e.name] = e.inode()
            assert e.is_file(follow_symlinks=False)
    assert set(seen) == names
    for n in list(names)[:50]:
        assert os.lstat(d / n).st_ino == seen[n]
    assert len(set(seen.values())) == len(names), "inode numbers not unique"
    assert d.stat().st_nlink == 2
    # ls agrees
    out = subprocess.run(["ls", "-1", "-f", str(d)], capture_output=True, check=True).stdout
    ls_names = os.fsdecode(out).splitlines()
    assert sorted(ls_names) == sorted(names | {".", ".."})


def test_readdir_long_names(mnt):
    """Entries of 255 bytes fill readdir buffers after a handful of names."""
    d = mnt / "long"
    d.mkdir()
    names = {f"{i:04d}-" + "n" * 250 for i in range(400)}
    for n in names:
        os.close(os.open(d / n, os.O_CREAT | os.O_WRONLY, 0o644))
    listed = os.listdir(d)
    assert len(listed) == len(names) and set(listed) == names


def test_readdir_with_concurrent_deletes_and_creates(mnt):
    d = mnt / "churn"
    d.mkdir()
    original = [f"f{i:05d}" for i in range(2000)]
    for n in original:
        os.close(os.open(d / n, os.O_CREAT | os.O_WRONLY, 0o644))
    rng = random.Random(1234)
    alive = list(original)
    deleted, created, yielded = set(), set(), []
    with os.scandir(d) as it:
        for i, e in enumerate(it):
            yielded.append(e.name)
            if i % 2 == 0 and alive:  # delete a random original entry
                victim = alive.pop(rng.randrange(len(alive)))
                os.unlink(d / victim)
                deleted.add(victim)
            if i % 3 == 0:  # create a brand-new entry
                n = f"new{i:05d}"
                os.close(os.open(d / n, os.O_CREAT | os.O_WRONLY, 0o644))
                created.add(n)
    dups = {n for n in yielded if yielded.count(n) > 1} if len(yielded) != len(set(yielded)) \
        else set()
    assert not dups, f"entries returned twice: {sorted(dups)[:10]}"
    survivors = set(original) - deleted
    skipped = survivors - set(yielded)
    assert not skipped, f"{len(skipped)} entries that existed throughout were skipped: " \
                        f"{sorted(skipped)[:10]}"
    assert set(yielded) <= set(original) | created
    assert set(os.listdir(d)) == survivors | created


def test_readdir_unlink_each_entry_while_iterating(mnt):
    """The rm -r pattern: unlink every entry right after reading it."""
    d = mnt / "rmr"
    d.mkdir()
    for i in range(1500):
        os.close(os.open(d / f"name-{i}", os.O_CREAT | os.O_WRONLY, 0o644))
    for i in range(20):
        (d / f"sub{i}").mkdir()
    removed = 0
    with os.scandir(d) as it:
        for e in it:
            if e.is_dir(follow_symlinks=False):
                os.rmdir(e.path)
            else:
                os.unlink(e.path)
            removed += 1
    assert removed == 1520, f"single pass removed {removed} of 1520 entries"
    assert os.listdir(d) == []
    os.rmdir(d)


def test_readdir_dot_dotdot_and_types(mnt):
    d = mnt / "d"
    d.mkdir()
    touch(d / "file")
    (d / "dir").mkdir()
    os.symlink("file", d / "link")
    os.mkfifo(d / "fifo")
    out = subprocess.run(["ls", "-a", str(d)], capture_output=True, text=True,
                         check=True).stdout.split()
    assert sorted(out) == sorted([".", "..", "dir", "fifo", "file", "link"])
    out = subprocess.run(["ls", "-a", str(mnt)], capture_output=True, text=True,
                         check=True).stdout.split()
    assert sorted(n for n in out if n != CONTROL_NAME) == [".", "..", "d"]
    ents = {e.name: e for e in os.scandir(d)}
    assert set(ents) == {"dir", "fifo", "file", "link"}  # no . / .. from scandir
    assert ents["file"].is_file(follow_symlinks=False)
    assert ents["dir"].is_dir(follow_symlinks=False)
    assert ents["link"].is_symlink()
    assert not ents["fifo"].is_file(follow_symlinks=False)
    assert os.stat(d / ".").st_ino == d.stat().st_ino
    assert os.stat(d / "..").st_ino == mnt.stat().st_ino
    # empty dir lists nothing; removed dir can't be listed
    (d / "dir" / "x").mkdir()
    os.rmdir(d / "dir" / "x")
    assert os.listdir(d / "dir") == []
    fd = os.open(d / "dir", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.rmdir(d / "dir")
        expect_errno(errno.ENOENT, os.open, f"/proc/self/fd/{fd}/new",
                     os.O_CREAT | os.O_WRONLY, 0o644)
        assert os.listdir(fd) == []
    finally:
        os.close(fd)


class Dirent(ctypes.Structure):
    _fields_ = [("d_ino", ctypes.c_uint64), ("d_off", ctypes.c_int64),
                ("d_reclen", ctypes.c_ushort), ("d_type", ctypes.c_ubyte),
                ("d_name", ctypes.c_char * 256)]


libc.opendir.argtypes = [ctypes.c_char_p]
libc.opendir.restype = ctypes.c_void_p
libc.readdir.argtypes = [ctypes.c_void_p]
libc.readdir.restype = ctypes.POINTER(Dirent)
libc.telldir.argtypes = [ctypes.c_void_p]
libc.telldir.restype = ctypes.c_long
libc.seekdir.argtypes = [ctypes.c_void_p, ctypes.c_long]
libc.seekdir.restype = None
libc.rewinddir.argtypes = [ctypes.c_void_p]
libc.rewinddir.restype = None
libc.closedir.argtypes = [ctypes.c_void_p]


@pytest.mark.skipif(sys.platform != "linux" or ctypes.sizeof(ctypes.c_long) != 8,
                    reason="dirent layout for 64-bit glibc")
def test_seekdir_telldir(mnt):
    d = mnt / "dir"
    d.mkdir()
    names = {f"file-{i:04d}" for i in range(700)}
    for n in names:
        os.close(os.open(d / n, os.O_CREAT | os.O_WRONLY, 0o644))
    dirp = libc.opendir(os.fsencode(str(d)))
    assert dirp, "opendir failed"
    try:
        entries = []  # (telldir before readdir, name)
        while True:
            pos = libc.telldir(dirp)
            ent = libc.readdir(dirp)
            if not ent:
                break
            entries.append((pos, ent.contents.d_name))
        got = [n for _, n in entries]
        assert len(got) == len(set(got))
        assert {os.fsdecode(n) for n in got} == names | {".", ".."}
        rng = random.Random(7)
        for idx in rng.sample(range(len(entries)), 60) + [0, len(entries) - 1]:
            pos, name = entries[idx]
            libc.seekdir(dirp, pos)
            ent = libc.readdir(dirp)
            assert ent, f"readdir after seekdir({pos}) returned end-of-dir"
            assert ent.contents.d_name == name, \
                f"seekdir to entry {idx} yielded {ent.contents.d_name!r}, expected {name!r}"
            # and the rest of the directory continues in the same order
            nxt = libc.readdir(dirp)
            if idx + 1 < len(entries):
                assert nxt and nxt.contents.d_name == entries[idx + 1][1]
            else:
                assert not nxt
        libc.rewinddir(dirp)
        ent = libc.readdir(dirp)
        assert ent.contents.d_name == entries[0][1]
    finally:
        libc.closedir(dirp)


# =============================================================================
# xattrs
# =============================================================================

def test_xattrs_basic(mnt):
    f = touch(mnt / "f", b"data")
    d = mnt / "d"
    d.mkdir()
    for target in (f, d):
        os.setxattr(target, "user.a", b"value-a")
        os.setxattr(target, "user.empty", b"")
        os.setxattr(target, "user.bin", bytes(range(256)))
        os.setxattr(target, "trusted.t", b"trusted value")
        os.setxattr(target, "security.s", b"sec")
        assert os.getxattr(target, "user.a") == b"value-a"
        assert os.getxattr(target, "user.empty") == b""
        assert os.getxattr(target, "user.bin") == bytes(range(256))
        assert os.getxattr(target, "trusted.t") == b"trusted value"
        assert os.getxattr(target, "security.s") == b"sec"
        assert {"user.a", "user.empty", "user.bin", "trusted.t", "security.s"} <= \
            set(os.listxattr(target))
        # overwrite and flags
        os.setxattr(target, "user.a", b"second")
        assert os.getxattr(target, "user.a") == b"second"
        os.setxattr(target, "user.a", b"third", os.XATTR_REPLACE)
        assert os.getxattr(target, "user.a") == b"third"
        os.setxattr(target, "user.new", b"n", os.XATTR_CREATE)
        assert os.getxattr(target, "user.new") == b"n"
        os.removexattr(target, "user.a")
        assert "user.a" not in os.listxattr(target)
        expect_errno(errno.ENODATA, os.getxattr, target, "user.a")
    # xattrs survive rename and are shared by hard links; fd variants work
    os.rename(f, mnt / "g")
    g = mnt / "g"
    os.link(g, mnt / "h")
    assert os.getxattr(mnt / "h", "user.bin") == bytes(range(256))
    fd = os.open(g, os.O_RDONLY)
    try:
        os.setxattr(fd, "user.viafd", b"fd")
        assert os.getxattr(fd, "user.viafd") == b"fd"
    finally:
        os.close(fd)
    assert os.getxattr(mnt / "h", "user.viafd") == b"fd"
    assert g.read_bytes() == b"data"
    # many attributes on one file
    for i in range(100):
        os.setxattr(g, f"user.many{i}", str(i).encode() * 10)
    names = os.listxattr(g)
    assert len(names) == len(set(names))
    for i in range(100):
        assert os.getxattr(g, f"user.many{i}") == str(i).encode() * 10
    # a new file has no user xattrs
    touch(mnt / "fresh")
    assert [n for n in os.listxattr(mnt / "fresh") if n.startswith("user.")] == []
    # symlink: l* calls act on the link itself; the target's attrs via follow
    os.symlink("g", mnt / "sl")
    assert os.getxattr(mnt / "sl", "user.viafd") == b"fd"
    expect_errno(errno.EPERM, os.setxattr, mnt / "sl", "user.x", b"1", follow_symlinks=False)
    expect_errno(errno.ENODATA, os.getxattr, mnt / "sl", "user.x", follow_symlinks=False)
    os.setxattr(mnt / "sl", "trusted.onlink", b"L", follow_symlinks=False)
    assert os.getxattr(mnt / "sl", "trusted.onlink", follow_symlinks=False) == b"L"
    expect_errno(errno.ENODATA, os.getxattr, g, "trusted.onlink")


def test_xattr_errors(mnt):
    f = touch(mnt / "f")
    os.setxattr(f, "user.exists", b"0123456789")
    expect_errno(errno.ENODATA, os.getxattr, f, "user.missing")
    expect_errno(errno.ENODATA, os.removexattr, f, "user.missing")
    expect_errno(errno.EEXIST, os.setxattr, f, "user.exists", b"x", os.XATTR_CREATE)
    expect_errno(errno.ENODATA, os.setxattr, f, "user.missing", b"x", os.XATTR_REPLACE)
    assert os.getxattr(f, "user.exists") == b"0123456789"
    expect_errno(errno.ENOENT, os.getxattr, mnt / "nofile", "user.exists")
    expect_errno(errno.ENOENT, os.setxattr, mnt / "nofile", "user.x", b"1")

    # buffer too small -> ERANGE; size 0 asks for the size
    n, _ = raw_getxattr(f, "user.exists", 0)
    assert n == 10
    expect_errno(errno.ERANGE, raw_getxattr, f, "user.exists", 5)
    assert raw_getxattr(f, "user.exists", 10) == (10, b"0123456789")
    n, _ = raw_listxattr(f, 0)
    assert n >= len(b"user.exists\0")
    expect_errno(errno.ERANGE, raw_listxattr, f, 3)
    n2, names = raw_listxattr(f, n)
    assert n2 == n and b"user.exists\0" in names

    # name length: 255 bytes OK, 256 -> ERANGE
    name255 = "user." + "n" * 250
    os.setxattr(f, name255, b"long name")
    assert os.getxattr(f, name255) == b"long name"
    expect_errno(errno.ERANGE, os.setxattr, f, name255 + "n", b"x")
    expect_errno(errno.ERANGE, os.getxattr, f, name255 + "n")
    expect_errno(errno.ERANGE, os.removexattr, f, name255 + "n")

    # unknown namespace / no namespace
    expect_errno(errno.EOPNOTSUPP, os.setxattr, f, "foo.bar", b"x")
    expect_errno(errno.EOPNOTSUPP, os.getxattr, f, "foo.bar")
    expect_errno((errno.EOPNOTSUPP, errno.ENODATA), os.removexattr, f, "foo.bar")
    expect_errno(errno.EOPNOTSUPP, os.setxattr, f, "noprefix", b"x")
    expect_errno(errno.ERANGE, os.setxattr, f, "", b"x")

    # user.* is only allowed on regular files and directories
    os.mkfifo(mnt / "fifo")
    expect_errno(errno.EPERM, os.setxattr, mnt / "fifo", "user.x", b"1")
    assert os.listxattr(f).count("user.exists") == 1


def test_xattr_value_limits(mnt):
    f = touch(mnt / "f")
    big = bytes(random.Random(3).randrange(256) for _ in range(65536))
    os.setxattr(f, "user.max", big)  # exactly 64 KiB: tmpfs accepts it
    assert os.getxattr(f, "user.max") == big
    n, _ = raw_getxattr(f, "user.max", 0)
    assert n == 65536
    expect_errno(errno.ERANGE, raw_getxattr, f, "user.max", 65535)
    expect_errno((errno.E2BIG, errno.ENOSPC), os.setxattr, f, "user.over", b"x" * 65537)
    expect_errno((errno.E2BIG, errno.ENOSPC), os.setxattr, f, "trusted.over", b"x" * 100000)
    expect_errno(errno.ENODATA, os.getxattr, f, "user.over")
    os.removexattr(f, "user.max")
    expect_errno(errno.ENODATA, os.getxattr, f, "user.max")


# =============================================================================
# timestamps
# =============================================================================

def test_utime_nanosecond_roundtrip(mnt):
    f = touch(mnt / "f", b"x")
    d = mnt / "d"
    d.mkdir()
    os.symlink("f", mnt / "l")
    cases = [
        (1_234_567_890_123_456_789, 987_654_321_987_654_321),
        (1, 999_999_999),
        (0, 0),
        (2**33 * 10**9 + 5, 2**33 * 10**9 + 7),  # beyond 2038 (and 2106)
        (1_700_000_000_000_000_001, 1_700_000_000_999_999_999),
    ]
    for target in (f, d):
        for at, mt in cases:
            os.utime(target, ns=(at, mt))
            st = os.stat(target)
            assert (st.st_atime_ns, st.st_mtime_ns) == (at, mt), (target, at, mt)
    # on the symlink itself
    os.utime(mnt / "l", ns=(5_000_000_001, 6_000_000_002), follow_symlinks=False)
    st = os.lstat(mnt / "l")
    assert (st.st_atime_ns, st.st_mtime_ns) == (5_000_000_001, 6_000_000_002)
    assert os.stat(f).st_mtime_ns != 6_000_000_002
    # via fd
    fd = os.open(f, os.O_RDONLY)
    try:
        os.utime(fd, ns=(111_111_111_111, 222_222_222_222))
    finally:
        os.close(fd)
    st = os.stat(f)
    assert (st.st_atime_ns, st.st_mtime_ns) == (111_111_111_111, 222_222_222_222)
    # utime(None) = now
    before = time.time_ns()
    os.utime(f)
    st = os.stat(f)
    assert abs(st.st_mtime_ns - before) < 5 * 10**9
    assert abs(st.st_atime_ns - before) < 5 * 10**9


def test_utime_beyond_64_bit_nanoseconds_is_clamped(mnt):
    f = touch(mnt / "f")
    os.utime(f, ns=((1 << 63) - 1, -(1 << 63)))
    st = os.stat(f)
    assert (st.st_atime_ns, st.st_mtime_ns) == ((1 << 63) - 1, -(1 << 63))
    os.utime(f, ns=(1 << 75, -(1 << 75)))          # year ~1.2 million: clamped
    st = os.stat(f)
    assert (st.st_atime_ns, st.st_mtime_ns) == ((1 << 63) - 1, -(1 << 63))
    assert read_file(f) == b""


def test_utime_pre_epoch(mnt):
    f = touch(mnt / "f")
    for at, mt in [(-1, -1), (-1_000_000_001, -86400 * 10**9 * 365 * 50 + 3)]:
        os.utime(f, ns=(at, mt))
        st = os.stat(f)
        assert (st.st_atime_ns, st.st_mtime_ns) == (at, mt)


def test_utimensat_now_and_omit(mnt):
    f = touch(mnt / "f", b"x")
    os.utime(f, ns=(10**18, 2 * 10**18))
    utimensat(f, "omit", 3 * 10**18 + 3)
    st = os.stat(f)
    assert (st.st_atime_ns, st.st_mtime_ns) == (10**18, 3 * 10**18 + 3)
    utimensat(f, 4 * 10**18 + 4, "omit")
    st = os.stat(f)
    assert (st.st_atime_ns, st.st_mtime_ns) == (4 * 10**18 + 4, 3 * 10**18 + 3)
    t0 = time.time_ns()
    utimensat(f, "now", "omit")
    st = os.stat(f)
    assert abs(st.st_atime_ns - t0) < 5 * 10**9
    assert st.st_mtime_ns == 3 * 10**18 + 3
    os.utime(f, ns=(10**18, 10**18))
    utimensat(f, "omit", "now")
    st = os.stat(f)
    assert st.st_atime_ns == 10**18
    assert abs(st.st_mtime_ns - t0) < 5 * 10**9
    c0 = st.st_ctime_ns
    time.sleep(TICK)
    utimensat(f, "omit", "omit")  # changes nothing (Linux: not even ctime)
    st = os.stat(f)
    assert st.st_atime_ns == 10**18
    time.sleep(TICK)
    utimensat(f, 5 * 10**18, "now")
    st = os.stat(f)
    assert st.st_atime_ns == 5 * 10**18
    assert abs(st.st_mtime_ns - time.time_ns()) < 5 * 10**9
    assert st.st_ctime_ns > c0  # any real time change updates ctime


def test_write_and_truncate_update_mtime_ctime(mnt):
    f = touch(mnt / "f", b"initial")
    old = 1_000_000_000_000_000_000
    for op in ("write", "pwrite", "ftruncate", "truncate", "o_trunc", "append"):
        os.utime(f, ns=(old, old))
        c0 = os.stat(f).st_ctime_ns
        time.sleep(TICK)
        if op == "write":
            with open(f, "r+b") as fh:
                fh.write(b"W")
        elif op == "pwrite":
            fd = os.open(f, os.O_WRONLY)
            os.pwrite(fd, b"P", 3)
            os.close(fd)
        elif op == "ftruncate":
            fd = os.open(f, os.O_WRONLY)
            os.ftruncate(fd, 100)
            os.close(fd)
        elif op == "truncate":
            os.truncate(f, 5)
        elif op == "o_trunc":
            os.close(os.open(f, os.O_WRONLY | os.O_TRUNC))
        elif op == "append":
            with open(f, "ab") as fh:
                fh.write(b"tail")
        st = os.stat(f)
        assert st.st_mtime_ns > old and abs(st.st_mtime_ns - time.time_ns()) < 5 * 10**9, op
        assert st.st_ctime_ns > c0, f"{op} did not update ctime"
        assert st.st_atime_ns == old, f"{op} changed atime"
        # reads do not change mtime/ctime
        m1, c1 = st.st_mtime_ns, st.st_ctime_ns
        time.sleep(TICK)
        read_file(f)
        st = os.stat(f)
        assert (st.st_mtime_ns, st.st_ctime_ns) == (m1, c1), f"read after {op} changed m/ctime"


def test_chmod_chown_update_ctime_only(mnt):
    f = touch(mnt / "f", b"x")
    old = 1_000_000_000_000_000_000
    os.utime(f, ns=(old, old))
    for op in (lambda: os.chmod(f, 0o600), lambda: os.chown(f, 1000, 1000),
               lambda: os.setxattr(f, "user.k", b"v"), lambda: os.link(f, mnt / "hl"),
               lambda: os.unlink(mnt / "hl")):
        c0 = os.stat(f).st_ctime_ns
        time.sleep(TICK)
        op()
        st = os.stat(f)
        assert st.st_ctime_ns > c0
        assert st.st_mtime_ns == old and st.st_atime_ns == old


def test_read_updates_atime(mnt):
    f = touch(mnt / "f", b"some data to read" * 100)
    mt = os.stat(f).st_mtime_ns
    old_atime = mt - 100 * 10**9  # atime older than mtime: relatime must update
    os.utime(f, ns=(old_atime, mt))
    m0, c0 = os.stat(f).st_mtime_ns, os.stat(f).st_ctime_ns
    drop_cache(f)
    time.sleep(TICK)
    with open(f, "rb") as fh:
        assert fh.read(10) == b"some data "
    st = os.stat(f)
    assert st.st_atime_ns > old_atime, "read did not update atime (atime < mtime)"
    assert abs(st.st_atime_ns - time.time_ns()) < 5 * 10**9
    assert (st.st_mtime_ns, st.st_ctime_ns) == (m0, c0)
    # very old atime (older than a day) also gets updated under relatime
    os.utime(f, ns=(mt - 2 * 86400 * 10**9, mt))
    drop_cache(f)
    read_file(f, uncached=False)
    assert os.stat(f).st_atime_ns > mt - 2 * 86400 * 10**9


def test_readdir_updates_dir_atime(mnt):
    d = mnt / "d"
    d.mkdir()
    touch(d / "x")
    dm = os.stat(d).st_mtime_ns
    os.utime(d, ns=(dm - 100 * 10**9, dm))
    os.listdir(d)
    assert os.stat(d).st_atime_ns > dm - 100 * 10**9, "readdir did not update dir atime"


def test_namespace_ops_update_parent_times(mnt):
    d = mnt / "d"
    d.mkdir()
    touch(d / "existing")
    (d / "olddir").mkdir()
    old = 1_000_000_000_000_000_000

    def check(op_name, op, dirs=(d,)):
        for x in dirs:
            os.utime(x, ns=(old, old))
        c0 = {x: os.stat(x).st_ctime_ns for x in dirs}
        time.sleep(TICK)
        op()
        for x in dirs:
            st = os.stat(x)
            assert st.st_mtime_ns > old, f"{op_name}: mtime of {x} not updated"
            assert st.st_ctime_ns > c0[x], f"{op_name}: ctime of {x} not updated"
            assert st.st_atime_ns == old, f"{op_name}: atime of {x} changed"

    check("create", lambda: touch(d / "new"))
    check("mkdir", lambda: os.mkdir(d / "sub"))
    check("symlink", lambda: os.symlink("x", d / "sl"))
    check("mknod", lambda: os.mkfifo(d / "fifo"))
    check("link", lambda: os.link(d / "new", d / "hard"))
    check("unlink", lambda: os.unlink(d / "hard"))
    check("rmdir", lambda: os.rmdir(d / "sub"))
    check("rename within", lambda: os.rename(d / "new", d / "renamed"))
    other = mnt / "other"
    other.mkdir()
    check("rename across", lambda: os.rename(d / "renamed", other / "moved"), dirs=(d, other))
    check("rename dir across", lambda: os.rename(d / "olddir", other / "olddir"),
          dirs=(d, other))
    # an overwriting write to a file in d does not touch d
    os.utime(d, ns=(old, old))
    with open(d / "existing", "wb") as fh:
        fh.write(b"x")
    assert os.stat(d).st_mtime_ns == old


def test_rename_updates_ctime_of_moved_entry(mnt):
    f = touch(mnt / "f", b"x")
    (mnt / "sub").mkdir()
    old = 1_000_000_000_000_000_000
    for src, dst in [(f, mnt / "g"), (mnt / "g", mnt / "sub" / "g"),
                     (mnt / "sub", mnt / "sub2")]:
        os.utime(src, ns=(old, old))
        c0 = os.stat(src).st_ctime_ns
        time.sleep(TICK)
        os.rename(src, dst)
        st = os.stat(dst)
        assert st.st_ctime_ns > c0, f"rename {src.name}->{dst} did not update ctime"
        assert st.st_mtime_ns == old


# =============================================================================
# ownership and permissions
# =============================================================================

def test_chmod_chown_basic(mnt):
    f = touch(mnt / "f", b"x")
    for mode in (0o000, 0o644, 0o7777, 0o4755, 0o2755, 0o1777, 0o600):
        os.chmod(f, mode)
        assert stat.S_IMODE(f.stat().st_mode) == mode
        assert stat.S_ISREG(f.stat().st_mode)
    os.chown(f, 1234, 5678)
    st = f.stat()
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    os.chown(f, -1, 42)
    assert (f.stat().st_uid, f.stat().st_gid) == (1234, 42)
    os.chown(f, 99, -1)
    assert (f.stat().st_uid, f.stat().st_gid) == (99, 42)
    os.chown(f, 2**32 - 2, 2**32 - 2)  # largest valid ids
    assert (f.stat().st_uid, f.stat().st_gid) == (2**32 - 2, 2**32 - 2)
    d = mnt / "d"
    d.mkdir()
    os.chmod(d, 0o3750)
    assert stat.S_IMODE(d.stat().st_mode) == 0o3750 and d.is_dir()
    os.chown(d, 7, 8)
    assert (d.stat().st_uid, d.stat().st_gid) == (7, 8)
    fd = os.open(f, os.O_RDONLY)
    try:
        os.fchmod(fd, 0o640)
        os.fchown(fd, 0, 0)
    finally:
        os.close(fd)
    st = f.stat()
    assert stat.S_IMODE(st.st_mode) == 0o640 and (st.st_uid, st.st_gid) == (0, 0)
    expect_errno(errno.ENOENT, os.chmod, mnt / "missing", 0o644)
    expect_errno(errno.ENOENT, os.chown, mnt / "missing", 0, 0)
    # root dir chmod/chown
    os.chmod(mnt, 0o755)
    assert stat.S_IMODE(mnt.stat().st_mode) == 0o755
    os.chown(mnt, 10, 20)
    assert (mnt.stat().st_uid, mnt.stat().st_gid) == (10, 20)


def test_chown_clears_setuid_setgid(mnt):
    f = touch(mnt / "f", b"#!/bin/sh\n")
    os.chmod(f, 0o6755)
    os.chown(f, 1000, 1000)
    assert stat.S_IMODE(f.stat().st_mode) == 0o755
    # setgid without group-exec is a mandatory-lock marker: kept on chown
    os.chmod(f, 0o2644)
    os.chown(f, 1001, 1001)
    assert stat.S_IMODE(f.stat().st_mode) == 0o2644
    # directories keep their bits
    d = mnt / "d"
    d.mkdir()
    os.chmod(d, 0o2775)
    os.chown(d, 1000, 1000)
    assert stat.S_IMODE(d.stat().st_mode) == 0o2775


def _write_some(path, data=b"nobody was here"):
    fd = os.open(path, os.O_WRONLY)
    try:
        return os.write(fd, data)
    finally:
        os.close(fd)


def _truncate(path, n):
    os.truncate(path, n)


def test_write_by_nonowner_clears_setuid(mnt_other, as_nobody):
    mnt = mnt_other
    f = touch(mnt / "suid", b"payload " * 10)
    os.chmod(f, 0o4777)
    assert as_nobody(_write_some, f) == 15
    assert stat.S_IMODE(f.stat().st_mode) == 0o777, "write by non-owner kept setuid"
    assert read_file(f).startswith(b"nobody was here")
    g = touch(mnt / "sgid", b"x" * 100)
    os.chmod(g, 0o6777)
    as_nobody(_write_some, g)
    assert stat.S_IMODE(g.stat().st_mode) == 0o777
    h = touch(mnt / "trunc", b"x" * 100)
    os.chmod(h, 0o4777)
    as_nobody(_truncate, h, 10)
    assert stat.S_IMODE(h.stat().st_mode) == 0o777, "truncate by non-owner kept setuid"
    assert h.stat().st_size == 10
    # root (CAP_FSETID) writing keeps the bits
    k = touch(mnt / "rootwrite", b"x")
    os.chmod(k, 0o4755)
    _write_some(k)
    assert stat.S_IMODE(k.stat().st_mode) == 0o4755


def test_sticky_directory(mnt_other, as_nobody):
    mnt = mnt_other
    assert stat.S_IMODE(mnt.stat().st_mode) == 0o1777
    victim = touch(mnt / "rootfile", b"root's", mode=0o666)
    os.chmod(victim, 0o666)
    expect_errno((errno.EPERM, errno.EACCES), as_nobody, os.unlink, victim)
    expect_errno((errno.EPERM, errno.EACCES), as_nobody, os.rename, victim, mnt / "stolen")
    assert victim.read_bytes() == b"root's"
    # but nobody may write to it (it is 0666) and may manage its own files
    as_nobody(_write_some, victim, b"ROOT")
    as_nobody(touch, mnt / "mine", b"nobody's")
    st = (mnt / "mine").stat()
    assert (st.st_uid, st.st_gid) == (NOBODY, NOGROUP)
    as_nobody(os.rename, mnt / "mine", mnt / "mine2")
    as_nobody(os.unlink, mnt / "mine2")
    assert not (mnt / "mine2").exists()
    # a sticky subdirectory owned by root, world-writable
    sd = mnt / "sticky"
    sd.mkdir()
    os.chmod(sd, 0o1777)
    touch(sd / "r", b"")
    expect_errno((errno.EPERM, errno.EACCES), as_nobody, os.unlink, sd / "r")
    # without the sticky bit nobody could delete it
    os.chmod(sd, 0o777)
    as_nobody(os.unlink, sd / "r")
    # root can delete nobody's files in a sticky dir
    os.chmod(sd, 0o1777)
    as_nobody(touch, sd / "n")
    os.unlink(sd / "n")


def _listdir(p):
    return sorted(os.listdir(p))


def _read(p):
    with open(p, "rb") as fh:
        return fh.read()


def _access(p, mode):
    return os.access(p, mode)


def test_permission_checks(mnt_other, as_nobody):
    mnt = mnt_other
    secret = touch(mnt / "secret", b"top secret")
    os.chmod(secret, 0o600)
    public = touch(mnt / "public", b"hello")
    os.chmod(public, 0o644)
    expect_errno(errno.EACCES, as_nobody, _read, secret)
    expect_errno(errno.EACCES, as_nobody, os.open, secret, os.O_RDONLY)
    assert as_nobody(_read, public) == b"hello"
    expect_errno(errno.EACCES, as_nobody, os.open, public, os.O_WRONLY)
    expect_errno(errno.EACCES, as_nobody, os.truncate, public, 0)
    assert as_nobody(_access, public, os.R_OK) is True
    assert as_nobody(_access, public, os.W_OK) is False
    assert as_nobody(_access, secret, os.R_OK) is False
    assert as_nobody(_access, public, os.X_OK) is False

    # owner-only operations
    expect_errno(errno.EPERM, as_nobody, os.chmod, public, 0o666)
    expect_errno(errno.EPERM, as_nobody, os.chown, public, NOBODY, NOGROUP)
    expect_errno(errno.EPERM, as_nobody, os.utime, public, ns=(1, 1))
    expect_errno(errno.EACCES, as_nobody, os.utime, public)  # "now" needs write access
    os.chmod(public, 0o666)
    as_nobody(os.utime, public)  # allowed with write access
    expect_errno(errno.EPERM, as_nobody, os.utime, public, ns=(1, 1))
    expect_errno(errno.EPERM, as_nobody, os.setxattr, public, "trusted.x", b"1")
    expect_errno(errno.EACCES, as_nobody, os.setxattr, secret, "user.x", b"1")
    assert stat.S_IMODE(public.stat().st_mode) == 0o666
    assert (public.stat().st_uid, public.stat().st_gid) == (0, 0)

    # directories: write and search permission
    d = mnt / "rootdir"
    d.mkdir()
    os.chmod(d, 0o755)
    touch(d / "inside", b"in")
    expect_errno(errno.EACCES, as_nobody, touch, d / "new")
    expect_errno(errno.EACCES, as_nobody, os.mkdir, d / "newdir")
    expect_errno(errno.EACCES, as_nobody, os.unlink, d / "inside")
    expect_errno(errno.EACCES, as_nobody, os.rename, d / "inside", mnt / "out")
    expect_errno(errno.EACCES, as_nobody, os.symlink, "x", d / "sl")
    assert as_nobody(_listdir, d) == ["inside"]
    os.chmod(d, 0o700)
    expect_errno(errno.EACCES, as_nobody, os.stat, d / "inside")
    expect_errno(errno.EACCES, as_nobody, _listdir, d)
    os.chmod(d, 0o711)  # search but no read
    expect_errno(errno.EACCES, as_nobody, _listdir, d)
    assert as_nobody(_read, d / "inside") == b"in"
    os.chmod(d, 0o744)  # read but no search
    expect_errno(errno.EACCES, as_nobody, os.stat, d / "inside")

    # group permissions apply to members of the group
    g = touch(mnt / "groupfile", b"grp")
    os.chown(g, 0, NOGROUP)
    os.chmod(g, 0o640)
    assert as_nobody(_read, g) == b"grp"
    os.chmod(g, 0o604)  # group denied even though other allows
    expect_errno(errno.EACCES, as_nobody, _read, g)

    # the owner's bits apply to the owner, even when others have more
    os.chown(g, NOBODY, NOGROUP)
    os.chmod(g, 0o077)
    expect_errno(errno.EACCES, as_nobody, _read, g)
    as_nobody(os.chmod, g, 0o600)  # but the owner can chmod
    assert as_nobody(_read, g) == b"grp"
    as_nobody(os.chown, g, -1, NOGROUP)  # chown to own group: allowed
    expect_errno(errno.EPERM, as_nobody, os.chown, g, -1, 0)
    # root bypasses permission bits
    os.chmod(secret, 0o000)
    assert secret.read_bytes() == b"top secret"


def test_nobody_creates_files_with_its_ids(mnt_other, as_nobody):
    mnt = mnt_other

    def create_all(base):
        old = os.umask(0o022)
        try:
            touch(base / "f", b"x", mode=0o666)
            os.mkdir(base / "d", 0o777)
            os.symlink("f", base / "l")
            os.mkfifo(base / "p", 0o666)
        finally:
            os.umask(old)

    as_nobody(create_all, mnt)
    for n in ("f", "d", "l", "p"):
        st = os.lstat(mnt / n)
        assert (st.st_uid, st.st_gid) == (NOBODY, NOGROUP), n
    assert stat.S_IMODE(os.lstat(mnt / "f").st_mode) == 0o644
    assert stat.S_IMODE(os.lstat(mnt / "d").st_mode) == 0o755
    assert stat.S_IMODE(os.lstat(mnt / "p").st_mode) == 0o644


def test_setgid_directory_inheritance(mnt_other, as_nobody):
    mnt = mnt_other
    d = mnt / "shared"
    d.mkdir()
    os.chown(d, 0, 4242)
    os.chmod(d, 0o2777)
    touch(d / "rootfile")
    os.mkdir(d / "subdir")
    os.symlink("rootfile", d / "sl")
    assert os.lstat(d / "rootfile").st_gid == 4242
    assert os.lstat(d / "sl").st_gid == 4242
    st = os.stat(d / "subdir")
    assert st.st_gid == 4242
    assert st.st_mode & stat.S_ISGID, "new subdir did not inherit setgid"
    # nobody (not a member of 4242) still inherits the group
    as_nobody(touch, d / "nobodyfile")
    as_nobody(os.mkdir, d / "nobodydir")
    st = os.stat(d / "nobodyfile")
    assert (st.st_uid, st.st_gid) == (NOBODY, 4242)
    st = os.stat(d / "nobodydir")
    assert (st.st_uid, st.st_gid) == (NOBODY, 4242) and st.st_mode & stat.S_ISGID
    # nested: inherits through the inherited setgid
    os.mkdir(d / "subdir" / "deeper")
    st = os.stat(d / "subdir" / "deeper")
    assert st.st_gid == 4242 and st.st_mode & stat.S_ISGID
    # without setgid, the creator's group is used
    plain = mnt / "plain"
    plain.mkdir()
    os.chown(plain, 0, 4242)
    os.chmod(plain, 0o777)
    touch(plain / "f")
    as_nobody(touch, plain / "g")
    assert os.stat(plain / "f").st_gid == 0
    assert os.stat(plain / "g").st_gid == NOGROUP


def test_chmod_setgid_by_non_member_is_dropped(mnt_other, as_nobody):
    mnt = mnt_other
    f = touch(mnt / "f", b"x")
    os.chown(f, NOBODY, 0)  # owned by nobody, group root (nobody is no member)
    as_nobody(os.chmod, f, 0o2755)
    assert stat.S_IMODE(f.stat().st_mode) == 0o755
    os.chown(f, NOBODY, NOGROUP)
    as_nobody(os.chmod, f, 0o2755)
    assert stat.S_IMODE(f.stat().st_mode) == 0o2755


# =============================================================================
# misc syscalls and tools
# =============================================================================

def test_fallocate(mnt):
    f = mnt / "f"
    r = subprocess.run(["fallocate", "-l", "1M", str(f)], capture_output=True, text=True)
    if r.returncode == 0:
        assert f.stat().st_size == 1 << 20
        assert read_file(f) == bytes(1 << 20)
    else:
        assert "not supported" in r.stderr.lower(), r.stderr
    # posix_fallocate: glibc emulates it if the fs can't; must end in a valid file
    g = touch(mnt / "g", b"head")
    fd = os.open(g, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, 300000)
        assert os.fstat(fd).st_size == 300000
        drop_cache(fd)
        assert os.pread(fd, 10, 0) == b"head" + bytes(6)
        assert os.pread(fd, 300000, 0)[4:] == bytes(299996)
    finally:
        os.close(fd)
    # punching a hole either works (and reads zeros) or is refused cleanly
    h = touch(mnt / "h", b"\xaa" * 200000)
    r = subprocess.run(["fallocate", "-p", "-o", "4096", "-l", "65536", str(h)],
                       capture_output=True, text=True)
    data = read_file(h)
    assert len(data) == 200000
    if r.returncode == 0:
        assert data == b"\xaa" * 4096 + bytes(65536) + b"\xaa" * (200000 - 4096 - 65536)
    else:
        assert data == b"\xaa" * 200000
    # keep-size preallocation must not change the size
    r = subprocess.run(["fallocate", "-n", "-l", "1M", str(h)], capture_output=True, text=True)
    assert h.stat().st_size == 200000
    # the mount survived all of this
    touch(mnt / "after", b"still alive")
    assert read_file(mnt / "after") == b"still alive"


def test_fsync_fdatasync_sync(mnt):
    f = mnt / "f"
    fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"durable" * 1000)
        os.fsync(fd)
        os.fdatasync(fd)
        os.pwrite(fd, b"X", 3)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    dfd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    os.sync()
    fd = os.open(f, os.O_RDONLY)
    try:
        os.fsync(fd)  # fsync of a read-only fd is allowed
    finally:
        os.close(fd)
    fd = os.open(f, os.O_WRONLY | os.O_SYNC)
    try:
        os.write(fd, b"S")
    finally:
        os.close(fd)
    assert read_file(f)[:8] == b"SurXble" + b"d"


_LOCK_PROBE = r"""
import fcntl, os, sys, errno
fd = os.open(sys.argv[1], os.O_RDWR)
kind = sys.argv[2]
try:
    if kind == "flock":
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    else:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, int(sys.argv[4]), int(sys.argv[3]))
except OSError as e:
    print(errno.errorcode[e.errno]); sys.exit(0)
print("LOCKED")
"""


def _probe(path, kind, start=0, length=0):
    r = subprocess.run([sys.executable, "-c", _LOCK_PROBE, str(path), kind, str(start),
                        str(length)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_flock_and_fcntl_locks(mnt):
    f = touch(mnt / "lockme", b"x" * 100)
    fd = os.open(f, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert _probe(f, "flock") in ("EAGAIN", "EWOULDBLOCK")
        fcntl.flock(fd, fcntl.LOCK_UN)
        assert _probe(f, "flock") == "LOCKED"
        r = subprocess.run(["flock", "-n", str(f), "true"], capture_output=True)
        assert r.returncode == 0
        # POSIX record locks on byte ranges
        fcntl.lockf(fd, fcntl.LOCK_EX, 10, 20)  # bytes 20..29
        assert _probe(f, "fcntl", 25, 1) in ("EAGAIN", "EACCES")
        assert _probe(f, "fcntl", 0, 10) == "LOCKED"
        assert _probe(f, "fcntl", 30, 10) == "LOCKED"
        fcntl.lockf(fd, fcntl.LOCK_UN, 10, 20)
        assert _probe(f, "fcntl", 25, 1) == "LOCKED"
        # F_GETLK-style query through lockf F_TEST equivalent: shared locks coexist
        fcntl.lockf(fd, fcntl.LOCK_SH)
    finally:
        os.close(fd)
    assert _probe(f, "fcntl", 0, 0) == "LOCKED"


def test_inode_numbers_and_stat_fields(mnt):
    paths = []
    for i in range(50):
        paths.append(touch(mnt / f"f{i}", b"x" * i))
    for i in range(10):
        p = mnt / f"d{i}"
        p.mkdir()
        paths.append(p)
    inos = [p.stat().st_ino for p in paths] + [mnt.stat().st_ino]
    assert len(set(inos)) == len(inos)
    st = (mnt / "f7").stat()
    assert st.st_size == 7
    assert st.st_dev == mnt.stat().st_dev
    assert st.st_blksize > 0
    # an inode number is stable across lookups and renames
    ino = st.st_ino
    os.rename(mnt / "f7", mnt / "d0" / "f7")
    assert (mnt / "d0" / "f7").stat().st_ino == ino
    # stat on a path with a trailing slash
    expect_errno(errno.ENOTDIR, os.stat, str(mnt / "f8") + "/")
    assert os.stat(str(mnt / "d1") + "/").st_ino == (mnt / "d1").stat().st_ino


def test_shell_tools(mnt, tmp_path):
    src = mnt / "tree"
    (src / "a" / "b" / "c").mkdir(parents=True)
    (src / "empty").mkdir()
    for i in range(30):
        touch(src / "a" / f"file{i}.txt", (f"line {i}\n" * (i * 50)).encode())
    touch(src / "a" / "b" / "c" / "deep.bin", os.urandom(200000))
    os.symlink("../a/file3.txt", src / "empty" / "link")
    os.link(src / "a" / "file4.txt", src / "hard")
    os.mkfifo(src / "fifo")

    r = subprocess.run(["ls", "-laR", str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "deep.bin" in r.stdout and "file29.txt" in r.stdout
    r = subprocess.run(["find", str(src), "-printf", "%y %P\n"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = set(r.stdout.splitlines())
    assert {"f a/b/c/deep.bin", "l empty/link", "p fifo", "d empty", "f hard"} <= lines
    # root, a, a/b, a/b/c, empty, 30 files, deep.bin, empty/link, hard, fifo
    assert len(lines) == 39, sorted(lines)

    # tar the tree out to local disk and back into the mount
    out = tmp_path / "t.tar"
    r = subprocess.run(["tar", "-C", str(src), "-cf", str(out), "."], capture_output=True)
    assert r.returncode == 0, r.stderr
    (mnt / "copy").mkdir()
    r = subprocess.run(["tar", "-C", str(mnt / "copy"), "-xpf", str(out)], capture_output=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(["diff", "-r", "--no-dereference", "-x", "fifo", str(src),
                        str(mnt / "copy")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    # tar -cf - . | tar -xf - entirely inside the mount
    (mnt / "copy2").mkdir()
    r = subprocess.run(f"tar -C '{src}' -cf - . | tar -C '{mnt / 'copy2'}' -xf -",
                       shell=True, capture_output=True)
    assert r.returncode == 0, r.stderr
    assert (mnt / "copy2" / "a" / "b" / "c" / "deep.bin").read_bytes() == \
        (src / "a" / "b" / "c" / "deep.bin").read_bytes()
    assert os.stat(mnt / "copy2" / "hard").st_ino == os.stat(mnt / "copy2" / "a" /
                                                             "file4.txt").st_ino

    r = subprocess.run(["df", str(mnt)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(["df", "-i", str(mnt)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(["du", "-s", str(mnt)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(["cp", "-r", str(src), str(mnt / "cpcopy")], capture_output=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(["mv", str(mnt / "cpcopy"), str(mnt / "copy" / "mvd")],
                       capture_output=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(["rm", "-rf", str(mnt / "copy"), str(mnt / "copy2")],
                       capture_output=True)
    assert r.returncode == 0, r.stderr
    assert root_entries(mnt) == ["tree"]
    # stat / sha via coreutils
    r = subprocess.run(["sha256sum", str(src / "a" / "b" / "c" / "deep.bin")],
                       capture_output=True, text=True, check=True)
    import hashlib
    assert r.stdout.split()[0] == hashlib.sha256(
        (src / "a" / "b" / "c" / "deep.bin").read_bytes()).hexdigest()


_RENAMER = r"""
import os, sys
mnt, idx, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
a, b = os.path.join(mnt, "A"), os.path.join(mnt, "B")
names = [f"p{idx}-{i}" for i in range(20)]
where = {n: a for n in names}
for r in range(rounds):
    n = names[r % len(names)]
    src = where[n]
    dst = b if src == a else a
    os.rename(os.path.join(src, n), os.path.join(dst, n))
    where[n] = dst
    # churn: create and remove a scratch entry, and list the directories
    t = os.path.join(dst, f"tmp{idx}-{r}")
    fd = os.open(t, os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, b"t")
    os.close(fd)
    os.unlink(t)
    if r % 10 == 0:
        os.mkdir(t + ".d")
        os.rename(t + ".d", os.path.join(a if dst == b else b, f"dir{idx}-{r}"))
        os.rmdir(os.path.join(a if dst == b else b, f"dir{idx}-{r}"))
        os.listdir(a)
for n in names:
    print(n, where[n])
"""


def test_concurrent_rename_and_create_stress(mnt):
    """stress-ng style: 4 processes renaming, creating and deleting in two
    shared directories while a reader keeps listing them."""
    (mnt / "A").mkdir()
    (mnt / "B").mkdir()
    for idx in range(4):
        for i in range(20):
            touch(mnt / "A" / f"p{idx}-{i}", f"{idx}-{i}".encode())
    procs = [subprocess.Popen([sys.executable, "-c", _RENAMER, str(mnt), str(idx), "200"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for idx in range(4)]
    # meanwhile: readdir must never show a file twice within one listing
    while any(p.poll() is None for p in procs):
        for d in ("A", "B"):
            listing = os.listdir(mnt / d)
            assert len(listing) == len(set(listing)), f"duplicate names in {d}"
    final = {}
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err[-2000:]
        for line in out.splitlines():
            n, where = line.split()
            final[n] = os.path.basename(where)
    a, b = set(os.listdir(mnt / "A")), set(os.listdir(mnt / "B"))
    assert not (a & b)
    assert a | b == set(final)
    for n, d in final.items():
        assert read_file(mnt / d / n) == n[1:].encode()
    assert (mnt / "A").stat().st_nlink == 2 and (mnt / "B").stat().st_nlink == 2



def _drop_kernel_caches():
    """Make the kernel forget cached dentries/inodes (FUSE FORGET for each)."""
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2")
        return True
    except OSError:
        return False


def test_everything_survives_kernel_forget(mnt):
    """After the kernel evicts its inodes (FORGET with the full lookup count),
    every file must still be found; open-but-unlinked files must live on."""
    tree = mnt / "t"
    tree.mkdir()
    for i in range(200):
        touch(tree / f"f{i}", f"file {i}".encode())
    (tree / "sub").mkdir()
    os.link(tree / "f1", tree / "sub" / "hl")
    os.symlink("../f2", tree / "sub" / "sl")
    os.listdir(tree)  # readdir(plus) may hand out lookups too
    with os.scandir(tree) as it:
        for e in it:
            e.stat(follow_symlinks=False)
    fd = os.open(tree / "f3", os.O_RDWR)
    os.unlink(tree / "f3")
    try:
        if not _drop_kernel_caches():
            skip_or_fail("cannot write /proc/sys/vm/drop_caches")
        time.sleep(0.2)
        for round_ in range(3):
            names = set(os.listdir(tree))
            assert names == {f"f{i}" for i in range(200) if i != 3} | {"sub"}
            for i in range(200):
                if i != 3:
                    assert (tree / f"f{i}").read_bytes() == f"file {i}".encode()
            assert (tree / "sub" / "hl").stat().st_nlink == 2
            assert os.readlink(tree / "sub" / "sl") == "../f2"
            os.pwrite(fd, b"still here %d" % round_, 0)
            drop_cache(fd)
            assert os.pread(fd, 12, 0) == b"still here %d" % round_
            assert os.fstat(fd).st_nlink == 0
            _drop_kernel_caches()
            time.sleep(0.1)
    finally:
        os.close(fd)
    _drop_kernel_caches()
    assert (tree / "f4").read_bytes() == b"file 4"


def test_inode_numbers_not_reused_while_in_use(mnt):
    """The daemon must not hand out a node id again before the kernel forgot it:
    the kernel would mix up the old and the new inode (EIO, wrong data)."""
    keep = touch(mnt / "keep", b"kept data")
    fd = os.open(keep, os.O_RDWR)
    kept_ino = os.fstat(fd).st_ino
    os.unlink(keep)
    try:
        for i in range(300):
            p = mnt / "x"
            touch(p, b"file %d" % i)
            assert p.read_bytes() == b"file %d" % i
            assert os.stat(p).st_ino != kept_ino
            os.unlink(p)
            os.mkdir(p)
            assert stat.S_ISDIR(os.stat(p).st_mode), f"round {i}: stale file inode reused"
            os.rmdir(p)
            os.symlink(f"target{i}", p)
            assert os.readlink(p) == f"target{i}"
            os.unlink(p)
            os.mkfifo(p)
            assert stat.S_ISFIFO(os.lstat(p).st_mode)
            os.unlink(p)
        drop_cache(fd)
        assert os.pread(fd, 100, 0) == b"kept data"
    finally:
        os.close(fd)


# =============================================================================
# differential namespace fuzzing against a real tmpfs
# =============================================================================

_FUZZ_DIRS = ["", "d", "d/e", "x"]
_FUZZ_NAMES = ["a", "b", "c", "d", "e"]


class _Oracle:
    """A scratch tmpfs to compare against."""

    def __init__(self):
        import tempfile
        self.path = Path(tempfile.mkdtemp(prefix="zsfs-oracle-"))
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "zsfs-oracle",
                            str(self.path)], capture_output=True, text=True)
        self.ok = r.returncode == 0
        self.err = r.stderr

    def close(self):
        if self.ok:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
        try:
            self.path.rmdir()
        except OSError:
            pass


def _fuzz_op(rng, i):
    def p():
        d = rng.choice(_FUZZ_DIRS)
        n = rng.choice(_FUZZ_NAMES)
        return f"{d}/{n}" if d else n
    op = rng.choice(["create", "write", "mkdir", "mkdir", "rmdir", "unlink", "rename",
                     "rename", "noreplace", "exchange", "link", "symlink", "truncate",
                     "chmod", "stat", "listdir", "readlink", "read"])
    args = {"create": (p(),), "write": (p(), rng.randrange(0, 9000)), "mkdir": (p(),),
            "rmdir": (p(),), "unlink": (p(),), "rename": (p(), p()),
            "noreplace": (p(), p()), "exchange": (p(), p()), "link": (p(), p()),
            "symlink": (rng.choice(["a", "../a", "d", "nowhere", "d/e"]), p()),
            "truncate": (p(), rng.choice([0, 1, 4095, 4096, 70000])),
            "chmod": (p(), rng.choice([0o600, 0o755, 0o4755])), "stat": (p(),),
            "listdir": (rng.choice(_FUZZ_DIRS) or ".",), "readlink": (p(),), "read": (p(),)}
    return op, args[op]


def _apply(root: Path, op, args, i):
    def P(x):
        return os.path.join(root, x)
    try:
        if op == "create":
            os.close(os.open(P(args[0]), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        elif op == "write":
            fd = os.open(P(args[0]), os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
            try:
                os.write(fd, (b"%d-" % i) * (args[1] // 4 + 1))
            finally:
                os.close(fd)
        elif op == "mkdir":
            os.mkdir(P(args[0]))
        elif op == "rmdir":
            os.rmdir(P(args[0]))
        elif op == "unlink":
            os.unlink(P(args[0]))
        elif op == "rename":
            os.rename(P(args[0]), P(args[1]))
        elif op == "noreplace":
            renameat2(P(args[0]), P(args[1]), RENAME_NOREPLACE)
        elif op == "exchange":
            renameat2(P(args[0]), P(args[1]), RENAME_EXCHANGE)
        elif op == "link":
            os.link(P(args[0]), P(args[1]))
        elif op == "symlink":
            os.symlink(args[0], P(args[1]))
        elif op == "truncate":
            os.truncate(P(args[0]), args[1])
        elif op == "chmod":
            os.chmod(P(args[0]), args[1])
        elif op == "stat":
            st = os.lstat(P(args[0]))
            return (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode),
                    st.st_size if not stat.S_ISDIR(st.st_mode) else None, st.st_nlink)
        elif op == "listdir":
            return sorted(n for n in os.listdir(P(args[0])) if n != CONTROL_NAME)
        elif op == "readlink":
            return os.readlink(P(args[0]))
        elif op == "read":
            with open(P(args[0]), "rb") as fh:
                return hashlib_sha(fh.read())
    except OSError as e:
        return errno.errorcode[e.errno]
    return "ok"


def hashlib_sha(b):
    import hashlib
    return hashlib.sha256(b).hexdigest()[:16]


def _snapshot(root: Path):
    snap = {}
    for dp, dn, fn in os.walk(root):
        rel = os.path.relpath(dp, root)
        for n in dn + fn:
            if rel == "." and n == CONTROL_NAME:
                continue
            if rel == "." and n in dn and n == CONTROL_NAME:
                continue
            p = os.path.join(dp, n)
            st = os.lstat(p)
            key = os.path.normpath(os.path.join(rel, n))
            entry = [stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_nlink]
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as fh:
                    entry += [st.st_size, hashlib_sha(fh.read())]
            elif stat.S_ISLNK(st.st_mode):
                entry.append(os.readlink(p))
            snap[key] = entry
        dn[:] = [d for d in dn if not (rel == "." and d == CONTROL_NAME)]
    return snap


def test_namespace_ops_match_tmpfs(mnt):
    """The same random sequence of namespace operations on zsfs and on a real
    tmpfs must give the same results (errno by errno) and the same tree."""
    oracle = _Oracle()
    if not oracle.ok:
        oracle.close()
        skip_or_fail(f"cannot mount a tmpfs oracle: {oracle.err}")
    try:
        for root in (mnt, oracle.path):
            for d in ("d", "d/e", "x"):
                os.mkdir(os.path.join(root, d))
        rng = random.Random(2024)
        for i in range(3000):
            op, args = _fuzz_op(rng, i)
            want = _apply(oracle.path, op, args, i)
            got = _apply(mnt, op, args, i)
            assert got == want, f"op #{i} {op}{args}: zsfs gave {got!r}, tmpfs gave {want!r}"
            if i % 250 == 249:
                assert _snapshot(mnt) == _snapshot(oracle.path), f"trees differ after op #{i}"
        assert _snapshot(mnt) == _snapshot(oracle.path)
    finally:
        oracle.close()
