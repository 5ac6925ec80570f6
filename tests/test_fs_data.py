"""File data integrity of a mounted zsfs (fsx-style).

zsfs splits files into compressed chunks, so most tests run twice: with
chunk_size=4096 (many cheap chunk boundaries) and with the default (64 KiB).
Before every verifying read the kernel page cache of the file is dropped
(``drop_cache``) so the bytes really come from the daemon.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import mmap
import os
import random
import shutil
import stat
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

try:
    from conftest import drop_cache, errno_of, expect_errno, read_file, wait_for
except ImportError:  # tests/ imported as a package
    from tests.conftest import drop_cache, errno_of, expect_errno, read_file, wait_for

KiB, MiB = 1024, 1024 * 1024

CHUNKS = [pytest.param("chunk_size=4096", 4096, id="chunk4k"),
          pytest.param("", 65536, id="chunk64k-default")]


@pytest.fixture(params=[pytest.param(p.values, id=p.id) for p in CHUNKS])
def cmnt(request, mount_zsfs):
    """(mountpoint, chunk_size) for both chunk sizes."""
    opts, chunk = request.param
    return mount_zsfs(opts).path, chunk


def pread_uncached(path, off, n):
    fd = os.open(path, os.O_RDONLY)
    try:
        drop_cache(fd)
        return os.pread(fd, n, off)
    finally:
        os.close(fd)


def first_diff(a: bytes, b: bytes) -> str:
    if len(a) != len(b):
        prefix = f"length {len(a)} != {len(b)}; "
    else:
        prefix = ""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"{prefix}first difference at byte {i}: got {a[i:i+16]!r} expected {b[i:i+16]!r}"
    return prefix + "common prefix identical"


def assert_bytes(got: bytes, expected: bytes, what: str = ""):
    if got != expected:
        raise AssertionError(f"{what}: {first_diff(got, expected)}")


def write_all(path, data, block=MiB, mode="wb"):
    with open(path, mode) as fh:
        for i in range(0, len(data), block):
            fh.write(data[i:i + block])


def text_data(n: int) -> bytes:
    """Compressible, realistic text (Python source from the stdlib)."""
    src = Path(os.__file__).read_bytes() + Path(random.__file__).read_bytes()
    return (src * (n // len(src) + 1))[:n]


# =============================================================================
# alignment / boundaries
# =============================================================================

def test_write_read_every_alignment(cmnt):
    mnt, C = cmnt
    rng = random.Random(42)
    f = mnt / "f"
    size = 4 * C
    model = bytearray(rng.randbytes(size))
    write_all(f, model)
    offsets = sorted({o for k in range(5) for d in (-1, 0, 1, C // 2)
                      if 0 <= (o := k * C + d) < size} | {0, 1, 511, 4095})
    lengths = [1, 7, C - 1, C, C + 1, 2 * C + 1]
    fd = os.open(f, os.O_RDWR)
    try:
        for off in offsets:
            for ln in lengths:
                data = rng.randbytes(ln)
                assert os.pwrite(fd, data, off) == ln
                end = off + ln
                if end > len(model):
                    model.extend(bytes(end - len(model)))
                model[off:end] = data
                drop_cache(fd)
                lo, hi = max(0, off - 3), end + 3
                assert_bytes(os.pread(fd, hi - lo, lo), bytes(model[lo:hi]),
                             f"after pwrite off={off} len={ln}")
        assert os.fstat(fd).st_size == len(model)
        # reads at every alignment, straight from the daemon
        for off in offsets:
            for ln in lengths:
                drop_cache(fd)
                assert_bytes(os.pread(fd, ln, off), bytes(model[off:off + ln]),
                             f"pread off={off} len={ln}")
    finally:
        os.close(fd)
    # O_DIRECT reads hand the daemon the exact unaligned offsets
    try:
        dfd = os.open(f, os.O_RDONLY | os.O_DIRECT)
    except OSError as e:
        assert e.errno == errno.EINVAL
    else:
        try:
            for off in offsets[::3]:
                for ln in (1, C + 1, 3 * C):
                    assert_bytes(os.pread(dfd, ln, off), bytes(model[off:off + ln]),
                                 f"O_DIRECT pread off={off} len={ln}")
        finally:
            os.close(dfd)
    assert_bytes(read_file(f), bytes(model), "final contents")


def test_overwrite_middle_append_and_o_append(cmnt):
    mnt, C = cmnt
    rng = random.Random(1)
    f = mnt / "f"
    model = bytearray(rng.randbytes(3 * C + 17))
    write_all(f, model)
    # overwrite in the middle, crossing a chunk boundary
    mid = rng.randbytes(C)
    with open(f, "r+b") as fh:
        fh.seek(C + C // 2)
        fh.write(mid)
    model[C + C // 2:C + C // 2 + C] = mid
    assert_bytes(read_file(f), bytes(model), "overwrite middle")
    # append with "ab"
    tail = rng.randbytes(C + 3)
    with open(f, "ab") as fh:
        fh.write(tail)
    model += tail
    assert_bytes(read_file(f), bytes(model), "append")
    # O_APPEND ignores the file position
    fd = os.open(f, os.O_WRONLY | os.O_APPEND)
    fd2 = os.open(f, os.O_WRONLY | os.O_APPEND)
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, b"APPENDED-1")
        os.write(fd2, b"APPENDED-2")
        os.write(fd, b"APPENDED-3")
        assert os.lseek(fd, 0, os.SEEK_CUR) == len(model) + 30
    finally:
        os.close(fd)
        os.close(fd2)
    model += b"APPENDED-1APPENDED-2APPENDED-3"
    # O_APPEND on an O_RDWR fd, reading in between
    fd = os.open(f, os.O_RDWR | os.O_APPEND)
    try:
        assert os.pread(fd, 10, 0) == bytes(model[:10])
        os.write(fd, b"X" * (C - 5))
        model += b"X" * (C - 5)
    finally:
        os.close(fd)
    assert f.stat().st_size == len(model)
    assert_bytes(read_file(f), bytes(model), "O_APPEND")
    # many tiny appends
    with open(f, "ab", buffering=0) as fh:
        for i in range(300):
            fh.write(bytes([i % 256]) * (i % 7 + 1))
            model += bytes([i % 256]) * (i % 7 + 1)
    assert_bytes(read_file(f), bytes(model), "tiny appends")


def test_pwrite_past_eof_makes_hole(cmnt):
    mnt, C = cmnt
    f = mnt / "f"
    write_all(f, b"start" * 20)  # 100 bytes
    fd = os.open(f, os.O_RDWR)
    try:
        far = 5 * C + 3
        os.pwrite(fd, b"END", far)
        assert os.fstat(fd).st_size == far + 3
        drop_cache(fd)
        assert os.pread(fd, 100, 0) == b"start" * 20
        assert_bytes(os.pread(fd, far - 100, 100), bytes(far - 100), "hole")
        assert os.pread(fd, 10, far) == b"END"
        # lseek past EOF and write: same thing
        os.lseek(fd, 9 * C + 1, os.SEEK_SET)
        os.write(fd, b"!")
        drop_cache(fd)
        gap = 9 * C + 1 - (far + 3)
        assert_bytes(os.pread(fd, gap + 1, far + 3), bytes(gap) + b"!", "hole 2")
        assert os.pread(fd, 10, 9 * C + 1) == b"!"
        assert os.fstat(fd).st_size == 9 * C + 2
        # reading past EOF returns nothing
        assert os.pread(fd, 100, 9 * C + 2) == b""
        assert os.pread(fd, 100, 100 * C) == b""
        # lseek past EOF alone does not change the size
        os.lseek(fd, 50 * C, os.SEEK_SET)
        assert os.fstat(fd).st_size == 9 * C + 2
    finally:
        os.close(fd)


def test_truncate_up_and_down(cmnt):
    mnt, C = cmnt
    rng = random.Random(5)
    f = mnt / "f"
    data = rng.randbytes(3 * C + 100)
    write_all(f, data)

    cut = 2 * C + 7  # not chunk-aligned
    os.truncate(f, cut)
    assert f.stat().st_size == cut
    assert_bytes(read_file(f), data[:cut], "after shrink")

    os.truncate(f, 4 * C)  # extend: the old tail must NOT come back
    assert f.stat().st_size == 4 * C
    assert_bytes(read_file(f), data[:cut] + bytes(4 * C - cut), "shrink then extend")

    # shrink inside a chunk then extend by writing beyond
    os.truncate(f, C - 1)
    fd = os.open(f, os.O_RDWR)
    try:
        os.pwrite(fd, b"Z", 3 * C)
        drop_cache(fd)
        got = os.pread(fd, 3 * C + 1, 0)
    finally:
        os.close(fd)
    assert_bytes(got, data[:C - 1] + bytes(2 * C + 1) + b"Z", "shrink then pwrite beyond")

    # ftruncate on an open fd, odd sizes, to zero and back
    fd = os.open(f, os.O_RDWR)
    try:
        for size in (C + 1, C, C - 1, 1, 0, 5, 2 * C + 3):
            os.ftruncate(fd, size)
            assert os.fstat(fd).st_size == size
        drop_cache(fd)
        assert_bytes(os.pread(fd, 3 * C, 0), bytes(2 * C + 3), "zero and re-extend")
        os.pwrite(fd, b"abc", 0)
        os.ftruncate(fd, 3)  # same size as data: no-op for contents
        os.ftruncate(fd, 3)
        drop_cache(fd)
        assert os.pread(fd, 10, 0) == b"abc"
    finally:
        os.close(fd)
    # truncate via open(O_TRUNC) then write
    with open(f, "wb") as fh:
        fh.write(b"new")
    assert read_file(f) == b"new"


def test_sparse_terabyte_file(cmnt):
    mnt, C = cmnt
    f = mnt / "sparse"
    r = subprocess.run(["truncate", "-s", "1T", str(f)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    T = 1 << 40
    st = f.stat()
    assert st.st_size == T
    assert st.st_blocks * 512 < MiB, f"sparse 1T file uses st_blocks={st.st_blocks}"
    fd = os.open(f, os.O_RDWR)
    try:
        drop_cache(fd)
        assert os.pread(fd, 65536, T - 65536) == bytes(65536)
        assert os.pread(fd, 65536, 1 << 39) == bytes(65536)
        assert os.pread(fd, 100, T) == b""
        assert os.lseek(fd, 0, os.SEEK_END) == T
        os.pwrite(fd, b"needle", (1 << 39) + 12345)
        drop_cache(fd)
        assert os.pread(fd, 10, (1 << 39) + 12343) == b"\0\0needle\0\0"
        assert os.fstat(fd).st_size == T
    finally:
        os.close(fd)
    assert f.stat().st_blocks * 512 < MiB
    du = subprocess.run(["du", "-B1", str(f)], capture_output=True, text=True, check=True)
    assert int(du.stdout.split()[0]) < MiB, du.stdout
    du = subprocess.run(["du", "-B1", "--apparent-size", str(f)], capture_output=True,
                        text=True, check=True)
    assert int(du.stdout.split()[0]) == T, du.stdout
    # a second sparse file, shrink it and grow it
    # shrink to the middle of the needle: only "ne" is left
    os.truncate(f, (1 << 39) + 12347)
    assert f.stat().st_size == (1 << 39) + 12347
    assert pread_uncached(f, (1 << 39) + 12343, 20) == b"\0\0ne"
    os.truncate(f, 0)
    assert f.stat().st_size == 0 and read_file(f) == b""


def seek_data(fd, off, size):
    """lseek(SEEK_DATA), with ENXIO (no data after off) mapped to size."""
    try:
        return os.lseek(fd, off, os.SEEK_DATA)
    except OSError as e:
        assert e.errno == errno.ENXIO, f"SEEK_DATA({off}): {e}"
        return size


def test_seek_data_hole_and_end(cmnt):
    mnt, C = cmnt
    f = mnt / "f"
    size = 32 * C
    fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, b"\x01" * (2 * C), 0)
        os.pwrite(fd, b"\x02" * C, 16 * C)
        os.ftruncate(fd, size)
        assert os.lseek(fd, 0, os.SEEK_END) == size
        assert os.lseek(fd, -10, os.SEEK_END) == size - 10
        assert os.lseek(fd, 5, os.SEEK_CUR) == size - 5
        expect_errno(errno.EINVAL, os.lseek, fd, -1, os.SEEK_SET)
        content = os.pread(fd, size, 0)
        for off in (0, 1, C, 2 * C, 2 * C + 1, 10 * C, 16 * C, 17 * C, size - 1):
            d = seek_data(fd, off, size)  # claims [off, d) is a hole
            assert off <= d <= size
            assert content[off:d] == bytes(d - off), f"SEEK_DATA({off})={d} skipped data"
            h = os.lseek(fd, off, os.SEEK_HOLE)
            assert off <= h <= size, f"SEEK_HOLE({off})={h}"
            if h < size:  # it claims a hole at h: the next data must be after zeros
                d2 = seek_data(fd, h, size)
                assert content[h:d2] == bytes(d2 - h), \
                    f"SEEK_HOLE({off})={h} / SEEK_DATA({h})={d2} hides data"
        expect_errno(errno.ENXIO, os.lseek, fd, size, os.SEEK_DATA)
        expect_errno(errno.ENXIO, os.lseek, fd, size + 1, os.SEEK_HOLE)
    finally:
        os.close(fd)


# =============================================================================
# fsx-style random exerciser
# =============================================================================

class Fsx:
    def __init__(self, path, seed, chunk, maxlen):
        self.path, self.chunk, self.maxlen = path, chunk, maxlen
        self.rng = random.Random(seed)
        self.model = bytearray()
        self.log = collections.deque(maxlen=40)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self.afd = os.open(path, os.O_WRONLY | os.O_APPEND)

    def close(self):
        os.close(self.fd)
        os.close(self.afd)

    def fail(self, msg):
        raise AssertionError(f"{msg}\nlast operations (oldest first):\n  " +
                             "\n  ".join(self.log))

    def offset(self):
        r = self.rng.random()
        if r < 0.45:
            k = self.rng.randrange(self.maxlen // self.chunk + 1)
            return max(0, min(self.maxlen - 1, k * self.chunk + self.rng.randint(-3, 3)))
        if r < 0.55 and self.model:
            return len(self.model) + self.rng.randint(-3, 3) if len(self.model) > 3 else 0
        return self.rng.randrange(self.maxlen)

    def length(self):
        r = self.rng.random()
        if r < 0.3:
            return self.rng.randint(1, 16)
        if r < 0.65:
            return self.rng.randint(1, 2 * self.chunk + 5)
        return self.rng.randint(1, self.maxlen // 4)

    def data(self, n, opno):
        k = self.rng.random()
        if k < 0.4:
            return self.rng.randbytes(n)
        if k < 0.55:
            return bytes(n)
        if k < 0.75:
            return bytes([opno % 255 + 1]) * n
        tag = b"op%06d|" % opno
        return (tag * (n // len(tag) + 1))[:n]

    def put(self, off, data):
        end = off + len(data)
        if end > len(self.model):
            self.model.extend(bytes(end - len(self.model)))
        self.model[off:end] = data

    def check(self, off, got, what):
        exp = bytes(self.model[off:off + len(got)]) if got else b""
        want_len = max(0, min(len(self.model) - off, self._asked))
        if len(got) != want_len or got != exp:
            self.fail(f"{what}: read at {off} (asked {self._asked}, file size "
                      f"{len(self.model)}): "
                      f"{first_diff(got, bytes(self.model[off:off + want_len]))}")

    def step(self, i):
        rng = self.rng
        op = rng.choices(
            ["write", "pwrite", "read", "pread", "truncate", "mapread", "mapwrite",
             "append", "invalidate", "fsync", "sizecheck"],
            [14, 14, 10, 10, 8, 5, 5, 5, 8, 1, 3])[0]
        fd = self.fd
        if op in ("write", "pwrite"):
            off, n = self.offset(), self.length()
            data = self.data(n, i)
            self.log.append(f"#{i} {op} off={off} len={n}")
            if op == "write":
                os.lseek(fd, off, os.SEEK_SET)
                got = os.write(fd, data)
            else:
                got = os.pwrite(fd, data, off)
            if got != n:
                self.fail(f"short {op}: {got} of {n}")
            self.put(off, data)
        elif op in ("read", "pread"):
            off, n = self.offset(), self.length()
            self.log.append(f"#{i} {op} off={off} len={n}")
            self._asked = n
            if op == "read":
                os.lseek(fd, off, os.SEEK_SET)
                got = os.read(fd, n)
            else:
                got = os.pread(fd, n, off)
            self.check(off, got, op)
        elif op == "truncate":
            r = rng.random()
            if r < 0.5:
                k = rng.randrange(self.maxlen // self.chunk + 1)
                size = max(0, k * self.chunk + rng.randint(-2, 2))
            else:
                size = rng.randrange(self.maxlen)
            self.log.append(f"#{i} truncate {len(self.model)} -> {size}")
            os.ftruncate(fd, size)
            if size < len(self.model):
                del self.model[size:]
            else:
                self.model.extend(bytes(size - len(self.model)))
        elif op in ("mapread", "mapwrite"):
            size = len(self.model)
            if size == 0:
                return
            off = rng.randrange(size)
            n = min(self.length(), size - off)
            self.log.append(f"#{i} {op} off={off} len={n} (map size {size})")
            with mmap.mmap(fd, size) as mm:
                if op == "mapread":
                    self._asked = n
                    self.check(off, mm[off:off + n], "mapread")
                else:
                    data = self.data(n, i)
                    mm[off:off + n] = data
                    mm.flush()
                    self.put(off, data)
        elif op == "append":
            n = self.length()
            data = self.data(n, i)
            self.log.append(f"#{i} append len={n} at {len(self.model)}")
            if os.write(self.afd, data) != n:
                self.fail("short append")
            self.model += data
        elif op == "invalidate":
            self.log.append(f"#{i} invalidate page cache")
            drop_cache(fd)
        elif op == "fsync":
            self.log.append(f"#{i} fsync")
            os.fsync(fd)
        elif op == "sizecheck":
            sz = os.fstat(fd).st_size
            if sz != len(self.model):
                self.fail(f"#{i} fstat size {sz} != expected {len(self.model)}")

    def full_check(self, what):
        drop_cache(self.fd)
        self._asked = len(self.model) + 100
        got = os.pread(self.fd, len(self.model) + 100, 0)
        self.check(0, got, what)


@pytest.mark.parametrize("seed", [1, 2])
def test_fsx_random_operations(cmnt, seed):
    mnt, C = cmnt
    maxlen = 64 * C if C <= 4096 else 8 * C
    fsx = Fsx(mnt / f"fsx{seed}", seed * 1000 + C, C, maxlen)
    try:
        for i in range(2500):
            fsx.step(i)
            if i % 500 == 499:
                fsx.full_check(f"full check after op {i}")
        fsx.full_check("final check")
    finally:
        fsx.close()
    # and once more through a fresh open, after the daemon had everything
    assert_bytes(read_file(mnt / f"fsx{seed}"), bytes(fsx.model), "after reopen")
    assert (mnt / f"fsx{seed}").stat().st_size == len(fsx.model)


def test_fsx_under_background_compaction(mount_zsfs):
    """Data must survive the allocator moving objects around underneath:
    fragment the pool with many small files while fsx runs and the background
    compactor is told to run all the time."""
    mnt = mount_zsfs("chunk_size=4096,compact_interval=0.05,compact_threshold=0.99").path
    rng = random.Random(77)
    fsx = Fsx(mnt / "fsx", 4242, 4096, 64 * 4096)
    others = {}
    compact = mnt / ".zsfs" / "compact"
    try:
        for i in range(2500):
            fsx.step(i)
            if i % 100 == 0:
                # many same-sized objects, then free 2 of 3: half-empty zspages
                size = rng.choice([700, 1000, 1500, 2500])
                batch = []
                for j in range(60):
                    name = f"small{i}-{j}"
                    data = rng.randbytes(size)
                    (mnt / name).write_bytes(data)
                    others[name] = data
                    batch.append(name)
                for name in batch[::3] + batch[1::3]:
                    os.unlink(mnt / name)
                    del others[name]
            if i % 250 == 125 and compact.exists():
                compact.write_text("1")  # and a manual compaction now and then
            if i % 500 == 499:
                time.sleep(0.15)  # let the background compactor run
                fsx.full_check(f"full check after op {i}")
        time.sleep(0.3)
        fsx.full_check("final check")
    finally:
        fsx.close()
    for name, data in others.items():
        assert_bytes(read_file(mnt / name), data, name)
    stats = mnt / ".zsfs" / "stats"
    if stats.exists():  # diagnostics only: show that compaction did happen
        lines = [ln for ln in stats.read_text().splitlines() if "compact" in ln]
        sys.stderr.write("\n".join(lines) + "\n")


# =============================================================================
# content kinds, mmap, big files
# =============================================================================

def test_content_kinds_roundtrip(mnt):
    N = 3 * MiB + 123
    rng = random.Random(9)
    kinds = {
        "random": os.urandom(N),
        "zeros": bytes(N),
        "same_ab": b"\xab" * N,
        "text": text_data(N),
        "mixed": b"".join(rng.randbytes(4096) if i % 2 else bytes(4096)
                          for i in range(N // 4096 + 1))[:N],
        "short_period": bytes(range(256)) * (N // 256) + bytes(N % 256),
        "one_byte": b"\x00",
        "empty": b"",
        "ff": b"\xff" * 70000,
    }
    for name, data in kinds.items():
        for block in (MiB, 4097):
            p = mnt / f"{name}-{block}"
            write_all(p, data, block=block)
            assert p.stat().st_size == len(data)
    for name, data in kinds.items():
        for block in (MiB, 4097):
            p = mnt / f"{name}-{block}"
            got = read_file(p)
            assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), \
                f"{name} (written in {block}-byte blocks): {first_diff(got, data)}"
    # overwrite a random file with zeros and the other way round
    write_all(mnt / f"random-{MiB}", bytes(N), mode="r+b")
    write_all(mnt / f"zeros-{MiB}", kinds["random"], mode="r+b")
    assert read_file(mnt / f"random-{MiB}") == bytes(N)
    assert read_file(mnt / f"zeros-{MiB}") == kinds["random"]


@pytest.mark.parametrize("opts", ["level=1", "level=19,chunk_size=16384",
                                  "chunk_size=32768,level=3"])
def test_options_roundtrip(mount_zsfs, opts):
    mnt = mount_zsfs(opts).path
    data = text_data(2 * MiB + 77) + os.urandom(300000) + bytes(200000)
    write_all(mnt / "f", data, block=100000)
    assert read_file(mnt / "f") == data


@pytest.mark.parametrize("opts,C", CHUNKS)
def test_mmap_shared_write_and_read(mount_zsfs, opts, C):
    mnt = mount_zsfs(opts).path
    rng = random.Random(11)
    f = mnt / "m"
    size = 5 * C + 123
    model = bytearray(rng.randbytes(size))
    write_all(f, model)
    with open(f, "r+b") as fh:
        with mmap.mmap(fh.fileno(), size) as mm:
            assert mm[:] == model
            for off, n in [(0, 1), (C - 10, 20), (2 * C, C), (size - 1, 1), (4 * C - 1, 2)]:
                patch = rng.randbytes(n)
                mm[off:off + n] = patch
                model[off:off + n] = patch
            mm.flush()
    assert_bytes(read_file(f), bytes(model), "read() after MAP_SHARED write + msync")
    # write() then a fresh mapping sees it
    with open(f, "r+b") as fh:
        fh.seek(3 * C - 2)
        fh.write(b"WRITTEN")
        model[3 * C - 2:3 * C + 5] = b"WRITTEN"
        fh.flush()
        with mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_READ) as mm:
            assert mm[3 * C - 2:3 * C + 5] == b"WRITTEN"
            assert mm[:] == model
    # MAP_PRIVATE writes never reach the file
    with open(f, "r+b") as fh:
        with mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_COPY) as mm:
            mm[0:4] = b"PRIV"
    assert read_file(f)[:4] == bytes(model[:4])
    # grow with ftruncate, then fill the new area through the mapping
    with open(f, "r+b") as fh:
        os.ftruncate(fh.fileno(), size + C)
        with mmap.mmap(fh.fileno(), size + C) as mm:
            assert mm[size:size + C] == bytes(C)
            mm[size:size + C] = b"\x5a" * C
            mm.flush()
    model += b"\x5a" * C
    assert_bytes(read_file(f), bytes(model), "mmap after ftruncate grow")
    # dirty pages written back at munmap/close without explicit msync
    with open(f, "r+b") as fh:
        mm = mmap.mmap(fh.fileno(), len(model))
        mm[100:110] = b"0123456789"
        mm.close()
    model[100:110] = b"0123456789"
    os.sync()
    assert_bytes(read_file(f), bytes(model), "mmap without msync")


def test_large_sequential_file(mnt):
    rng = random.Random(3)
    parts = []
    for i in range(32):
        k = i % 4
        parts.append(rng.randbytes(MiB) if k == 0 else bytes(MiB) if k == 1
                     else text_data(MiB) if k == 2 else bytes([i]) * MiB)
    data = b"".join(parts)
    f = mnt / "big"
    t0 = time.monotonic()
    write_all(f, data)
    write_s = time.monotonic() - t0
    assert f.stat().st_size == len(data)
    drop_cache(f)
    h = hashlib.sha256()
    with open(f, "rb", buffering=0) as fh:
        while True:
            b = fh.read(99991)
            if not b:
                break
            h.update(b)
    assert h.digest() == hashlib.sha256(data).digest()
    # copy inside the mount (copy_file_range / sendfile paths of cp and shutil)
    shutil.copyfile(f, mnt / "copy1")
    r = subprocess.run(["cp", str(f), str(mnt / "copy2")], capture_output=True)
    assert r.returncode == 0, r.stderr
    for c in ("copy1", "copy2"):
        assert hashlib.sha256(read_file(mnt / c)).digest() == hashlib.sha256(data).digest(), c
    # splice through a pipe and copy_file_range, straight from the syscalls
    fin = os.open(f, os.O_RDONLY)
    fout = os.open(mnt / "spliced", os.O_WRONLY | os.O_CREAT, 0o644)
    r, w = os.pipe()
    try:
        done = 0
        while done < 3 * MiB:
            n = os.splice(fin, w, 65536, offset_src=done)
            assert n > 0
            m = 0
            while m < n:
                m += os.splice(r, fout, n - m)
            done += n
    finally:
        for x in (fin, fout, r, w):
            os.close(x)
    assert read_file(mnt / "spliced") == data[:3 * MiB]
    fin = os.open(f, os.O_RDONLY)
    fout = os.open(mnt / "cfr", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        try:
            done = 0
            while done < 2 * MiB:
                n = os.copy_file_range(fin, fout, 2 * MiB - done, MiB + done, done)
                assert n > 0
                done += n
        except OSError as e:  # the syscall may be refused; it must not half-work
            assert e.errno in (errno.EOPNOTSUPP, errno.EXDEV, errno.ENOSYS, errno.EINVAL), e
            done = None
    finally:
        os.close(fin)
        os.close(fout)
    if done is not None:
        assert read_file(mnt / "cfr") == data[MiB:3 * MiB]
    # vectored I/O
    fd = os.open(mnt / "vec", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        bufs = [b"a" * 5000, b"b" * 70000, b"c" * 3]
        assert os.writev(fd, bufs) == 75003
        out = [bytearray(4999), bytearray(70004)]
        drop_cache(fd)
        assert os.preadv(fd, out, 0) == 75003
        assert bytes(out[0]) + bytes(out[1]) == b"a" * 5000 + b"b" * 70000 + b"c" * 3
    finally:
        os.close(fd)
    sys.stderr.write(f"32 MiB written in {write_s:.2f}s\n")


# =============================================================================
# cp -a of the standard library
# =============================================================================

_STDLIB_SKIP = {"site-packages", "dist-packages", "test", "idlelib", "tkinter", "lib2to3",
                "distutils", "turtledemo", "ensurepip", "__pycache__"}


def _stdlib_sources(max_files=2000, max_bytes=30 * MiB):
    root = Path(sysconfig.get_paths()["stdlib"])
    chosen, files, nbytes = [], 0, 0
    for name in sorted(os.listdir(root)):
        if name in _STDLIB_SKIP or name.startswith("config-"):
            continue
        p = root / name
        cnt, size = 0, 0
        if p.is_symlink() or p.is_file():
            cnt, size = 1, p.lstat().st_size
        elif p.is_dir():
            for dp, dn, fn in os.walk(p):
                if "site-packages" in dp:
                    dn[:] = []
                    continue
                cnt += len(fn)
                size += sum(os.lstat(os.path.join(dp, x)).st_size for x in fn)
        if files + cnt > max_files or nbytes + size > max_bytes:
            continue
        chosen.append(p)
        files += cnt
        nbytes += size
    return root, chosen, files, nbytes


def test_cp_a_stdlib(mnt):
    root, sources, nfiles, nbytes = _stdlib_sources()
    assert nfiles > 300, "stdlib not found / too small"
    dest = mnt / "stdlib"
    dest.mkdir()
    t0 = time.monotonic()
    r = subprocess.run(["cp", "-a", *map(str, sources), str(dest)], capture_output=True,
                       text=True)
    cp_s = time.monotonic() - t0
    assert r.returncode == 0, r.stderr[-3000:]
    problems, checked = [], 0
    for src in sources:
        _compare(src, dest / src.name, problems)
        checked += 1
        if src.is_dir() and not src.is_symlink():
            for dp, dn, fn in os.walk(src):
                for name in dn + fn:
                    s = Path(dp) / name
                    _compare(s, dest / os.path.relpath(s, root), problems)
                    checked += 1
        if len(problems) > 20:
            break
    assert not problems, f"{len(problems)} differences, e.g.:\n" + "\n".join(problems[:20])
    # and the destination has nothing extra
    for dp, dn, fn in os.walk(dest):
        rel = os.path.relpath(dp, dest)
        for name in dn + fn:
            assert os.path.lexists(root / rel / name), f"extra entry {rel}/{name}"
    sys.stderr.write(f"cp -a of {nfiles} files / {nbytes / MiB:.1f} MiB took {cp_s:.1f}s; "
                     f"{checked} entries compared\n")


def _compare(src: Path, dst: Path, problems: list):
    try:
        s, d = os.lstat(src), os.lstat(dst)
    except OSError as e:
        problems.append(f"{dst}: {e}")
        return
    if s.st_mode != d.st_mode:
        problems.append(f"{dst}: mode {oct(d.st_mode)} != {oct(s.st_mode)}")
    if (s.st_uid, s.st_gid) != (d.st_uid, d.st_gid):
        problems.append(f"{dst}: owner {(d.st_uid, d.st_gid)} != {(s.st_uid, s.st_gid)}")
    if s.st_mtime_ns != d.st_mtime_ns:
        problems.append(f"{dst}: mtime {d.st_mtime_ns} != {s.st_mtime_ns}")
    if stat.S_ISLNK(s.st_mode):
        if os.readlink(src) != os.readlink(dst):
            problems.append(f"{dst}: symlink target differs")
    elif stat.S_ISREG(s.st_mode):
        if s.st_size != d.st_size:
            problems.append(f"{dst}: size {d.st_size} != {s.st_size}")
        elif Path(src).read_bytes() != read_file(dst):
            problems.append(f"{dst}: contents differ")


# =============================================================================
# concurrency
# =============================================================================

_WORKER = r"""
import hashlib, os, random, sys
mnt, idx, region = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(1000 + idx)
data = bytearray()
fd = os.open(os.path.join(mnt, f"own{idx}"), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
while len(data) < (3 << 20):
    n = rng.randint(1, 200000)
    chunk = rng.randbytes(n) if rng.random() < 0.5 else bytes([idx + 1]) * n
    assert os.write(fd, chunk) == n
    data += chunk
    if rng.random() < 0.3:
        off = rng.randrange(len(data))
        got = os.pread(fd, 5000, off)
        if got != bytes(data[off:off + 5000]):
            sys.exit(f"worker {idx}: own-file read mismatch at {off}")
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
if os.pread(fd, len(data) + 10, 0) != bytes(data):
    sys.exit(f"worker {idx}: own file differs at the end")
os.close(fd)
sfd = os.open(os.path.join(mnt, "shared"), os.O_RDWR)
base = idx * region
mine = bytearray(region)
for _ in range(400):
    off = rng.randrange(region)
    n = min(rng.randint(1, 20000), region - off)
    b = rng.randbytes(n)
    assert os.pwrite(sfd, b, base + off) == n
    mine[off:off + n] = b
    if rng.random() < 0.3:
        o2 = rng.randrange(region)
        m = min(8192, region - o2)
        if os.pread(sfd, m, base + o2) != bytes(mine[o2:o2 + m]):
            sys.exit(f"worker {idx}: shared region read mismatch at {base + o2}")
os.fsync(sfd)
os.close(sfd)
print(hashlib.sha256(data).hexdigest(), hashlib.sha256(mine).hexdigest())
"""


def test_concurrent_processes(mnt):
    region = MiB + 1000  # regions deliberately not chunk aligned
    nproc = 4
    fd = os.open(mnt / "shared", os.O_RDWR | os.O_CREAT, 0o644)
    os.ftruncate(fd, nproc * region)
    os.close(fd)
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(mnt), str(i), str(region)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(nproc)]
    results = []
    for i, p in enumerate(procs):
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, f"worker {i} failed: {err.strip()[-2000:]}"
        results.append(out.split())
    shared = read_file(mnt / "shared")
    assert len(shared) == nproc * region
    for i, (own_hash, region_hash) in enumerate(results):
        assert hashlib.sha256(read_file(mnt / f"own{i}")).hexdigest() == own_hash, \
            f"own{i} differs after all workers finished"
        assert hashlib.sha256(shared[i * region:(i + 1) * region]).hexdigest() == \
            region_hash, f"region {i} of the shared file was corrupted"


# =============================================================================
# statfs, space accounting, limits
# =============================================================================

def test_statvfs(mount_zsfs):
    mnt = mount_zsfs("size=64m,nr_inodes=1000").path
    sv = os.statvfs(mnt)
    assert sv.f_bsize == sv.f_frsize
    assert sv.f_blocks * sv.f_frsize == 64 * MiB
    assert sv.f_bfree <= sv.f_blocks and sv.f_bavail <= sv.f_bfree
    assert sv.f_bfree >= sv.f_blocks - 16  # fresh fs is (almost) empty
    assert sv.f_files == 1000
    assert sv.f_ffree == 999  # the root directory is an inode
    assert sv.f_favail == sv.f_ffree
    assert sv.f_namemax == 255
    for i in range(3):
        (mnt / f"f{i}").write_bytes(b"x")
    (mnt / "d").mkdir()
    (mnt / "d" / "e").mkdir()
    os.symlink("f0", mnt / "sl")
    os.mkfifo(mnt / "fifo")
    assert os.statvfs(mnt).f_ffree == 999 - 7
    before = os.statvfs(mnt).f_bfree
    data = os.urandom(8 * MiB)
    write_all(mnt / "big", data)
    drop_cache(mnt / "big")
    after = os.statvfs(mnt)
    used = (before - after.f_bfree) * after.f_frsize
    assert used >= 7.5 * MiB, f"writing 8 MiB of random data used only {used} bytes"
    assert after.f_bfree <= after.f_blocks
    os.unlink(mnt / "big")
    assert wait_for(lambda: os.statvfs(mnt).f_bfree >= before - 2, timeout=5), \
        f"f_bfree {os.statvfs(mnt).f_bfree} did not return to {before}"
    for p in ("f0", "f1", "f2", "sl", "fifo"):
        os.unlink(mnt / p)
    os.rmdir(mnt / "d" / "e")
    os.rmdir(mnt / "d")
    assert wait_for(lambda: os.statvfs(mnt).f_ffree == 999, timeout=5), \
        f"f_ffree {os.statvfs(mnt).f_ffree} != 999 after removing everything"


def test_statvfs_default_mount(mnt):
    sv = os.statvfs(mnt)
    assert sv.f_bsize == sv.f_frsize and sv.f_bsize > 0
    assert sv.f_blocks > 0 and 0 < sv.f_bfree <= sv.f_blocks
    assert sv.f_files > 0 and 0 < sv.f_ffree <= sv.f_files
    assert sv.f_namemax == 255
    r = subprocess.run(["df", "-B1", str(mnt)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.zsfs_only
def test_st_blocks_reflect_compressed_size(mnt):
    N = 10 * MiB

    def blocks_of(name, data):
        p = mnt / name
        write_all(p, data)
        drop_cache(p)
        return p

    zeros = blocks_of("zeros", bytes(N))
    same = blocks_of("same", b"\xab" * N)
    rnd = blocks_of("random", os.urandom(N))
    txt = blocks_of("text", text_data(N))

    def used(p):
        return p.stat().st_blocks * 512

    assert wait_for(lambda: used(zeros) <= N // 100, timeout=3), \
        f"10 MiB of zeros: st_blocks*512 = {used(zeros)}"
    assert wait_for(lambda: used(same) <= N // 100, timeout=3), \
        f"10 MiB of 0xab: st_blocks*512 = {used(same)}"
    assert wait_for(lambda: used(rnd) >= N * 0.98, timeout=3), \
        f"10 MiB of random data: st_blocks*512 = {used(rnd)}"
    assert used(rnd) <= N * 1.1, f"random data: st_blocks*512 = {used(rnd)}"
    assert wait_for(lambda: 0 < used(txt) < N // 2, timeout=3), \
        f"10 MiB of text: st_blocks*512 = {used(txt)}"
    assert txt.stat().st_size == N
    # du follows st_blocks
    du = subprocess.run(["du", "-B1", str(zeros)], capture_output=True, text=True, check=True)
    assert int(du.stdout.split()[0]) <= N // 100
    # overwriting random data with zeros shrinks the usage again
    write_all(rnd, bytes(N), mode="r+b")
    drop_cache(rnd)
    assert wait_for(lambda: used(rnd) <= N // 100, timeout=3), \
        f"random overwritten by zeros: st_blocks*512 = {used(rnd)}"


def test_write_past_max_file_size(mnt):
    f = mnt / "f"
    fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        # offset + length beyond 2**63-1: tmpfs says EINVAL
        expect_errno((errno.EINVAL, errno.EFBIG), os.pwrite, fd, b"x" * 16, 2**63 - 10)
        expect_errno((errno.EINVAL, errno.EFBIG), os.pwrite, fd, b"x", 2**63 - 1)
        # a write ending just below 2**63 is accepted by tmpfs; zsfs may refuse
        # with EFBIG, but must never corrupt anything
        e = errno_of(os.pwrite, fd, b"y", 2**63 - 10)
        if e is None:
            assert os.fstat(fd).st_size == 2**63 - 9
            drop_cache(fd)
            assert os.pread(fd, 10, 2**63 - 11) == b"\0y"
            assert os.fstat(fd).st_blocks * 512 < MiB
            os.ftruncate(fd, 0)
        else:
            assert e == errno.EFBIG, f"expected success or EFBIG, got {errno.errorcode[e]}"
            assert os.fstat(fd).st_size == 0
        os.pwrite(fd, b"fine", 0)
        drop_cache(fd)
        assert os.pread(fd, 10, 0) == b"fine"
    finally:
        os.close(fd)
    expect_errno(errno.EINVAL, os.truncate, f, -1)
    # the mount survived
    (mnt / "g").write_bytes(b"alive")
    assert read_file(mnt / "g") == b"alive"


# =============================================================================
# real applications on the mount
# =============================================================================

def test_exec_binaries_and_scripts(mnt):
    true_bin = shutil.which("true")
    shutil.copy2(true_bin, mnt / "mytrue")
    r = subprocess.run([str(mnt / "mytrue")])
    assert r.returncode == 0
    script = mnt / "script.sh"
    script.write_text("#!/bin/sh\necho \"hello from $0\"\n")
    os.chmod(script, 0o755)
    r = subprocess.run([str(script)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == f"hello from {script}"
    os.chmod(script, 0o644)
    r = subprocess.run(["sh", "-c", f"'{script}'"], capture_output=True, text=True)
    assert r.returncode == 126  # permission denied
    # a running executable can't be opened for writing
    shutil.copy2(shutil.which("sleep"), mnt / "mysleep")
    proc = subprocess.Popen([str(mnt / "mysleep"), "30"])
    try:
        time.sleep(0.3)
        expect_errno(errno.ETXTBSY, os.open, mnt / "mysleep", os.O_WRONLY)
    finally:
        proc.kill()
        proc.wait()
    # Python imports a module stored on the mount
    (mnt / "pkg").mkdir()
    (mnt / "pkg" / "__init__.py").write_text("VALUE = 42\n")
    r = subprocess.run([sys.executable, "-c", "import pkg; print(pkg.VALUE)"], cwd=mnt,
                       capture_output=True, text=True)
    assert r.stdout.strip() == "42", r.stderr


@pytest.mark.parametrize("journal", ["DELETE", "WAL"])
def test_sqlite_database(mnt, journal):
    import sqlite3
    db = mnt / "test.db"
    con = sqlite3.connect(db)
    try:
        assert con.execute(f"PRAGMA journal_mode={journal}").fetchone()[0].upper() == journal
        con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, b BLOB)")
        rng = random.Random(4)
        for batch in range(8):
            with con:
                con.executemany("INSERT INTO t (v, b) VALUES (?, ?)",
                                [(f"row {batch}-{i}", rng.randbytes(rng.randint(0, 2000)))
                                 for i in range(100)])
        with con:
            con.execute("DELETE FROM t WHERE id % 3 = 0")
            con.execute("UPDATE t SET v = v || ' updated' WHERE id % 5 = 0")
        con.execute("VACUUM")
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        n = con.execute("SELECT count(*) FROM t").fetchone()[0]
    finally:
        con.close()
    # a second connection (after the first closed) sees the same data
    con = sqlite3.connect(db)
    try:
        assert con.execute("SELECT count(*) FROM t").fetchone()[0] == n == 800 - 266
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        con.close()



_SIGNALLED_IO = r"""
import os, random, signal, sys, hashlib
path = sys.argv[1]
hits = 0
def handler(signum, frame):
    global hits
    hits += 1
signal.signal(signal.SIGALRM, handler)
signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)
rng = random.Random(8)
data = rng.randbytes(4 << 20)
fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
for rnd in range(3):
    for off in range(0, len(data), 1 << 20):
        n = os.pwrite(fd, data[off:off + (1 << 20)], off)
        assert n == 1 << 20, n
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    got = b"".join(os.pread(fd, 1 << 20, off) for off in range(0, len(data), 1 << 20))
    if got != data:
        sys.exit(f"round {rnd}: data differs")
signal.setitimer(signal.ITIMER_REAL, 0, 0)
os.close(fd)
print(hits, hashlib.sha256(data).hexdigest())
"""


def test_io_under_signal_storm(mnt):
    """Requests interrupted by signals (FUSE INTERRUPT) must neither corrupt
    data nor wedge the daemon."""
    r = subprocess.run([sys.executable, "-c", _SIGNALLED_IO, str(mnt / "sig")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    hits, digest = r.stdout.split()
    assert int(hits) > 10
    assert hashlib.sha256(read_file(mnt / "sig")).hexdigest() == digest
    (mnt / "after").write_bytes(b"ok")
    assert read_file(mnt / "after") == b"ok"


def test_many_open_files(mnt):
    fds = []
    try:
        for i in range(400):
            fds.append(os.open(mnt / f"f{i % 100}", os.O_RDWR | os.O_CREAT, 0o644))
        for i, fd in enumerate(fds):
            os.pwrite(fd, b"%04d" % i, (i // 100) * 4)
    finally:
        for fd in fds:
            os.close(fd)
    for j in range(100):
        expected = b"".join(b"%04d" % (k * 100 + j) for k in range(4))
        assert read_file(mnt / f"f{j}") == expected


def test_nonzero_data_never_reported_as_zero_blocks(mnt, tmp_path):
    """st_blocks == 0 on a non-empty file tells GNU tar --sparse (and other
    hole-aware tools) that the file is one big hole: they then skip reading it
    and restore zeros. A file holding any non-zero byte must report st_blocks > 0,
    however well it compresses."""
    cases = {
        "same_ab": b"\xab" * MiB,
        "same_word": b"\x01\x02\x03\x04\x05\x06\x07\x08" * (MiB // 8),
        "text": b"hello world\n" * 100,
        "tiny": b"x",
        "zeros_then_byte": bytes(MiB) + b"\x01",
    }
    for name, data in cases.items():
        write_all(mnt / name, data)
        drop_cache(mnt / name)
        blocks = (mnt / name).stat().st_blocks
        assert blocks > 0, f"{name}: {len(data)} bytes of non-zero data but st_blocks == 0"
    out = tmp_path / "x"
    out.mkdir()
    r = subprocess.run(f"tar -C '{mnt}' -S -cf - {' '.join(cases)} | tar -C '{out}' -xf -",
                       shell=True, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for name, data in cases.items():
        assert (out / name).read_bytes() == data, f"tar --sparse lost the data of {name}"
