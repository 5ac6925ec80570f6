"""``-o noxattr``: no extended attributes, and a FUSE round trip less per write(2).

Without it the kernel asks for ``security.capability`` before every write(2), to
know whether the write must drop file capabilities; the only way to stop that is to
answer GETXATTR with ENOSYS, after which the kernel fails every xattr call itself.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess

import pytest

from zsfs.options import OptionError, parse_options

try:
    from test_fs_requests import clear, requests
except ImportError:  # tests/ imported as a package
    from tests.test_fs_requests import clear, requests


def write_small_pieces(path, pieces: int) -> bytes:
    data = b""
    with open(path, "wb", buffering=0) as f:
        for i in range(pieces):
            piece = f"piece {i}\n".encode()
            assert f.write(piece) == len(piece)
            data += piece
    return data


def test_with_xattrs_every_write_costs_a_getxattr(mnt):
    clear(mnt)
    write_small_pieces(mnt / "f", 10)
    table = requests(mnt)
    assert table["write"][0] == 10 + 1                 # the clearing write too
    assert table["getxattr"][0] == 10


def test_noxattr_drops_the_getxattr_of_every_write(mount_zsfs):
    m = mount_zsfs("noxattr")
    clear(m.path)
    data = write_small_pieces(m / "f", 10)
    assert (m / "f").read_bytes() == data
    table = requests(m.path)
    # the clearing write's GETXATTR was answered ENOSYS; the kernel never asked again
    assert table["write"][0] == 10 + 1 and "getxattr" not in table


@pytest.mark.parametrize("call", [
    lambda p: os.getxattr(p, "user.a"),
    lambda p: os.setxattr(p, "user.a", b"1"),
    lambda p: os.listxattr(p),
    lambda p: os.removexattr(p, "user.a"),
    lambda p: os.getxattr(p, "security.capability"),
])
def test_noxattr_answers_every_xattr_call_with_eopnotsupp(mount_zsfs, call):
    m = mount_zsfs("noxattr")
    (m / "f").write_bytes(b"x")
    for _ in range(2):                                 # the kernel's answer, then its memory
        with pytest.raises(OSError) as e:
            call(m / "f")
        assert e.value.errno == errno.EOPNOTSUPP
    assert (m / "f").read_bytes() == b"x"


def test_cp_a_into_a_noxattr_mount_keeps_data_and_modes(mount_zsfs, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"alpha" * 1000)
    os.chmod(src / "a", 0o640)
    os.setxattr(src / "a", "user.note", b"dropped")
    (src / "d").mkdir()
    (src / "d" / "b").write_bytes(os.urandom(50000))
    os.symlink("a", src / "link")
    m = mount_zsfs("noxattr")
    done = subprocess.run(["cp", "-a", str(src), str(m / "copy")], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    copy = m / "copy"
    assert (copy / "a").read_bytes() == (src / "a").read_bytes()
    assert (copy / "d" / "b").read_bytes() == (src / "d" / "b").read_bytes()
    assert os.readlink(copy / "link") == "a"
    assert os.stat(copy / "a").st_mode & 0o7777 == 0o640
    shutil.rmtree(copy)
    assert os.listdir(m.path) == [".zsfs"]


def test_noxattr_options():
    assert parse_options("").xattr
    assert not parse_options("noxattr").xattr
    assert parse_options("noxattr,xattr").xattr          # the last one wins
    assert "noxattr" not in parse_options("noxattr").fuse_options


@pytest.mark.parametrize("bad", ["noxattr=1", "xattr=off"])
def test_noxattr_takes_no_value(bad):
    with pytest.raises(OptionError, match="takes no value"):
        parse_options(bad)
