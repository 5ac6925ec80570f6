"""``-o writeback``: the kernel's writeback cache, and what it changes.

With it, write(2) copies into the page cache and returns; the kernel sends the dirty
pages later, merged into larger WRITEs, several in flight. Small writes cost one round
trip (the GETXATTR of ``security.capability``, unless ``noxattr``) instead of two, but
an error of those later WRITEs (ENOSPC past ``mem_limit`` or ``size``) reaches the
application at fsync(2) or close(2), not at the write(2) that caused it.
"""

from __future__ import annotations

import errno
import os
import random

import pytest

from conftest import read_file, wait_for
from zsfs.options import OptionError, parse_options

try:
    from test_fs_control import stats
    from test_fs_requests import clear, requests
except ImportError:  # tests/ imported as a package
    from tests.test_fs_control import stats
    from tests.test_fs_requests import clear, requests


def test_writeback_options():
    assert not parse_options("").writeback
    assert parse_options("writeback").writeback
    assert not parse_options("writeback,nowriteback").writeback     # the last one wins
    assert "writeback" not in parse_options("writeback").fuse_options


@pytest.mark.parametrize("bad", ["writeback=1", "nowriteback=on"])
def test_writeback_takes_no_value(bad):
    with pytest.raises(OptionError, match="takes no value"):
        parse_options(bad)


def write_pieces(path, pieces: int, size: int) -> bytes:
    data = b"".join(f"{i:0{size - 1}d}\n".encode() for i in range(pieces))
    with open(path, "wb", buffering=0) as f:
        for i in range(pieces):
            assert f.write(data[i * size:(i + 1) * size]) == size
        os.fsync(f.fileno())
    return data


def read_after_lost_writeback(path) -> bytes:
    """The file as the daemon holds it, after pages of it failed to be written back
    (an fsync may still report that failure once more: writeback may still be ending)."""
    with open(path, "rb") as f:
        try:
            os.fsync(f.fileno())
        except OSError as e:
            assert e.errno == errno.ENOSPC
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        return f.read()


def test_small_writes_are_merged_into_few_requests(mount_zsfs):
    m = mount_zsfs("writeback")
    assert stats(m.path)["writeback"] == 1
    clear(m.path)
    data = write_pieces(m / "f", 400, 64)
    table = requests(m.path)
    # the clearing write plus the kernel's merged pages: far fewer than 400
    assert table["write"][0] <= 1 + 20, table
    assert read_file(m / "f") == data
    assert "read" in requests(m.path)                  # it came from the daemon


def test_without_writeback_every_write_is_a_request(mnt):
    clear(mnt)
    data = write_pieces(mnt / "f", 50, 64)     # none crosses a page
    assert requests(mnt)["write"][0] == 1 + 50
    assert read_file(mnt / "f") == data


def test_random_overwrites_reach_the_daemon_intact(mount_zsfs):
    m = mount_zsfs("writeback")
    path = m / "f"
    model = bytearray(os.urandom(1 << 20))
    path.write_bytes(model)
    rng = random.Random(7)
    fd = os.open(path, os.O_RDWR)
    try:
        for _ in range(500):
            off = rng.randrange(len(model) + 50000)
            piece = rng.randbytes(rng.choice((1, 100, 4096, 5000)))
            assert os.pwrite(fd, piece, off) == len(piece)
            end = off + len(piece)
            if end > len(model):
                model.extend(bytes(end - len(model)))
            model[off:end] = piece
        os.ftruncate(fd, len(model) - 3000)
        del model[len(model) - 3000:]
        os.fsync(fd)
    finally:
        os.close(fd)
    assert os.stat(path).st_size == len(model)
    assert read_file(path) == model


def test_enospc_comes_at_close_and_earlier_files_stay_intact(mount_zsfs):
    m = mount_zsfs("writeback,mem_limit=2m")
    kept = os.urandom(512 << 10)
    (m / "kept").write_bytes(kept)
    fd = os.open(m / "kept", os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    data = os.urandom(4 << 20)                           # incompressible: cannot fit
    fd = os.open(m / "big", os.O_CREAT | os.O_WRONLY, 0o644)
    assert os.write(fd, data) == len(data)               # into the page cache
    with pytest.raises(OSError) as e:
        os.close(fd)
    assert e.value.errno == errno.ENOSPC
    assert read_file(m / "kept") == kept
    # each page of the file is either what was written or zeros (lost), never garbage
    got = read_after_lost_writeback(m / "big")
    held = 0
    for at in range(0, len(got), 4096):
        page = got[at:at + 4096]
        if page == data[at:at + len(page)]:
            held += 1
        else:
            assert page == bytes(len(page)), f"page at {at} is neither data nor zeros"
    assert held > 0
    # the file can be removed and its space reused, once the kernel lets go of it
    os.unlink(m / "big")
    assert wait_for(lambda: stats(m.path)["orig_data_size"] == len(kept), timeout=10)
    (m / "again").write_bytes(b"fits")
    assert read_file(m / "again") == b"fits"


def test_enospc_comes_at_fsync_once(mount_zsfs):
    m = mount_zsfs("writeback,mem_limit=2m")
    fd = os.open(m / "big", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        assert os.write(fd, os.urandom(4 << 20)) == 4 << 20
        with pytest.raises(OSError) as e:
            os.fsync(fd)
        assert e.value.errno == errno.ENOSPC
        os.fsync(fd)                                     # reported once, as on any fs
    finally:
        os.close(fd)


def test_setuid_is_cleared_by_a_write_of_another_user(mount_zsfs, as_nobody):
    m = mount_zsfs("writeback,allow_other")
    path = m / "prog"
    path.write_bytes(b"#!/bin/sh\n")
    os.chmod(path, 0o6777)

    def append() -> None:
        with open(path, "ab") as f:
            f.write(b"echo hi\n")

    as_nobody(append)
    assert os.stat(path).st_mode & 0o7777 == 0o0777
    assert read_file(path) == b"#!/bin/sh\necho hi\n"


def test_control_files_take_writes_and_refuse_other_changes(mount_zsfs):
    """Under the writeback cache the kernel sets a file's times before each write;
    on a control file that is accepted (and changes nothing), unlike utime or chmod."""
    m = mount_zsfs("writeback")
    knob = m / ".zsfs" / "compact_threshold"
    with open(knob, "w") as f:
        f.write("0.5\n")
    assert knob.read_text() == "0.5\n"
    for change in (lambda: os.utime(knob), lambda: os.chmod(knob, 0o600),
                   lambda: os.truncate(knob, 10)):
        with pytest.raises(OSError) as e:
            change()
        assert e.value.errno == errno.EPERM
    fd = os.open(knob, os.O_WRONLY | os.O_TRUNC)
    try:
        with pytest.raises(OSError) as e:
            os.write(fd, b"nope\n")
        assert e.value.errno == errno.EINVAL
    finally:
        os.close(fd)
    assert knob.read_text() == "0.5\n"
