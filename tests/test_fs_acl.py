"""POSIX ACLs (``-o acl``) as tmpfs has them: getfacl/setfacl, access decisions, default
ACLs inherited on create, mode and ACL kept in step, and the errors (malformed ACL
xattrs, a non-owner setting one, symlinks, special files), each compared against a
kernel tmpfs mounted for the test.

One difference is pinned down rather than hidden: the FUSE kernel module applies the
umask to a new file's mode before zsfs sees it (pyfuse3 cannot ask for
FUSE_DONT_MASK), so where tmpfs lets a parent's default ACL replace the umask, zsfs
masks the default ACL with the already-umasked mode (README, "POSIX ACLs").
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

try:
    from conftest import require_fuse, skip_or_fail
    from test_fs_security import compare, mode_of, outcome, tmpfs_factory  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests.conftest import require_fuse, skip_or_fail
    from tests.test_fs_security import compare, mode_of, outcome, tmpfs_factory  # noqa: F401

NOBODY, NOGROUP = 65534, 65534
ACCESS, DEFAULT = "system.posix_acl_access", "system.posix_acl_default"


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        skip_or_fail(f"{tool} is not installed (Debian package acl)")


@pytest.fixture
def roots(mount_zsfs, tmpfs_factory) -> dict[str, Path]:
    """A zsfs with ``acl,allow_other`` and a tmpfs, both fresh and mode 1777."""
    require_fuse()
    need("setfacl")
    need("getfacl")
    return {"zsfs": mount_zsfs("acl,allow_other").path, "tmpfs": tmpfs_factory()}


def setfacl(*args) -> None:
    subprocess.run(["setfacl", *map(str, args)], check=True, capture_output=True, text=True)


def getfacl(path) -> str:
    """getfacl's listing without the '# file:' line (the paths differ)."""
    r = subprocess.run(["getfacl", "-p", "-n", str(path)], check=True, capture_output=True,
                       text=True)
    return "\n".join(ln for ln in r.stdout.splitlines() if not ln.startswith("# file:"))


def acl_xattr(*entries: tuple[int, int, int], version: int = 2) -> bytes:
    return struct.pack("<I", version) + b"".join(struct.pack("<HHI", *e) for e in entries)


def umask(mask: int):
    class _Umask:
        def __enter__(self):
            self.old = os.umask(mask)

        def __exit__(self, *exc):
            os.umask(self.old)
    return _Umask()


def test_setfacl_getfacl_and_the_mode(roots):
    def scenario(root: Path) -> dict[str, Any]:
        f = root / "f"
        f.write_text("x")
        f.chmod(0o640)
        setfacl("-m", f"u:{NOBODY}:rw,g:{NOGROUP}:r", f)
        listed = getfacl(f)
        names = sorted(n for n in os.listxattr(f) if n.startswith("system."))
        out = {"acl": listed, "mode": mode_of(f), "names": names}
        setfacl("-x", f"u:{NOBODY}", f)
        out["after -x"] = getfacl(f)
        setfacl("-b", f)
        out["after -b"], out["mode -b"] = getfacl(f), mode_of(f)
        out["names -b"] = [n for n in os.listxattr(f) if n.startswith("system.")]
        return out

    got = compare(roots, scenario)
    assert f"user:{NOBODY}:rw-" in got["acl"] and "mask::rw-" in got["acl"]
    assert got["mode"] == "0o660" and got["names"] == [ACCESS]
    assert got["names -b"] == [] and got["mode -b"] == "0o640"


def test_an_acl_grants_and_denies(roots, as_nobody):
    def scenario(root: Path) -> dict[str, Any]:
        f = root / "secret"
        f.write_text("for nobody's eyes")
        f.chmod(0o600)
        out = {"before": outcome(as_nobody, f.read_text)}
        setfacl("-m", f"u:{NOBODY}:r", f)
        out["granted read"] = outcome(as_nobody, f.read_text)
        out["not write"] = outcome(as_nobody, f.write_text, "no")
        setfacl("-m", "m::-", f)                      # the mask takes it back
        out["masked"] = outcome(as_nobody, f.read_text)
        d = root / "d"
        d.mkdir(mode=0o700)
        setfacl("-m", f"g:{NOGROUP}:wx", d)
        out["create via group entry"] = outcome(as_nobody, (d / "n").write_text, "n")
        return out

    got = compare(roots, scenario)
    assert got["before"] == "EACCES" and got["granted read"] == "for nobody's eyes"
    assert got["not write"] == "EACCES" and got["masked"] == "EACCES"
    assert got["create via group entry"] == 1


def test_default_acls_are_inherited_without_umask_bits(roots):
    def scenario(root: Path) -> dict[str, Any]:
        d = root / "shared"
        d.mkdir()
        setfacl("-d", "-m", f"u:{NOBODY}:rwx,g::rx,o::-", d)
        with umask(0):
            (d / "file").write_text("x")
            (d / "dir").mkdir()
            os.mkfifo(d / "fifo", 0o640)
            os.symlink("file", d / "link")
            fd = os.open(d / "narrow", os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
            (d / "dir" / "nested").write_text("y")
        out = {name: (getfacl(d / name), mode_of(d / name))
               for name in ("file", "dir", "fifo", "narrow")}
        out["link"] = oct(stat.S_IMODE(os.lstat(d / "link").st_mode))
        out["nested"] = getfacl(d / "dir" / "nested")
        return out

    got = compare(roots, scenario)
    assert f"user:{NOBODY}:rwx" in got["file"][0] and "default:" not in got["file"][0]
    assert "default:user::rwx" in got["dir"][0]         # directories inherit it whole
    assert got["file"][1] == "0o660" and got["narrow"][1] == "0o600"
    assert got["link"] == "0o777"


def test_umask_applies_without_a_default_acl(roots):
    def scenario(root: Path) -> dict[str, Any]:
        with umask(0o027):
            (root / "f").write_text("x")
            (root / "d").mkdir()
            os.mknod(root / "p", stat.S_IFIFO | 0o666)
        return {n: mode_of(root / n) for n in ("f", "d", "p")}

    assert compare(roots, scenario) == {"f": "0o640", "d": "0o750", "p": "0o640"}


def test_a_default_acl_meets_the_umasked_mode(roots):
    # tmpfs ignores the umask under a default ACL; the FUSE module has applied it
    # before zsfs sees the mode, so the group class keeps only what the umask left
    results = {}
    for name, root in roots.items():
        d = root / "shared"
        d.mkdir()
        setfacl("-d", "-m", "g::rwx,o::-", d)
        with umask(0o022):
            (d / "f").write_text("x")
        results[name] = mode_of(d / "f")
    assert results == {"tmpfs": "0o660", "zsfs": "0o640"}


def test_chmod_keeps_the_acl_in_step(roots):
    def scenario(root: Path) -> dict[str, Any]:
        f = root / "f"
        f.write_text("x")
        setfacl("-m", f"u:{NOBODY}:rwx,g::rw", f)
        f.chmod(0o751)
        after_chmod = getfacl(f)
        g = root / "g"
        g.write_text("x")
        setfacl("-m", "g::rwx", g)                    # no mask: the group entry follows
        g.chmod(0o604)
        return {"f": after_chmod, "f mode": mode_of(f), "g": getfacl(g), "g mode": mode_of(g)}

    got = compare(roots, scenario)
    assert "mask::r-x" in got["f"] and "other::--x" in got["f"] and got["f mode"] == "0o751"
    assert "group::---" in got["g"] and got["g mode"] == "0o604"


def test_an_acl_the_mode_expresses_is_not_stored(roots):
    def scenario(root: Path) -> dict[str, Any]:
        f = root / "f"
        f.write_text("x")
        os.setxattr(f, ACCESS, acl_xattr((1, 6, 0xFFFFFFFF), (4, 4, 0xFFFFFFFF),
                                         (0x20, 0, 0xFFFFFFFF)))
        return {"mode": mode_of(f), "names": [n for n in os.listxattr(f)
                                              if n.startswith("system.")],
                "read": outcome(os.getxattr, f, ACCESS)}

    got = compare(roots, scenario)
    assert got == {"mode": "0o640", "names": [], "read": "ENODATA"}


MALFORMED = {
    "header only, bad version": struct.pack("<I", 1),
    "truncated entry": acl_xattr((1, 6, 0))[:-2],
    "no other entry": acl_xattr((1, 6, 0xFFFFFFFF), (4, 4, 0xFFFFFFFF)),
    "named user without mask": acl_xattr((1, 6, 0xFFFFFFFF), (2, 6, 1000), (4, 4, 0xFFFFFFFF),
                                         (0x20, 0, 0xFFFFFFFF)),
    "unknown tag": acl_xattr((1, 6, 0xFFFFFFFF), (0x40, 6, 0), (4, 4, 0xFFFFFFFF),
                             (0x20, 0, 0xFFFFFFFF)),
    "two owners": acl_xattr((1, 6, 0xFFFFFFFF), (1, 6, 0xFFFFFFFF), (4, 4, 0xFFFFFFFF),
                            (0x20, 0, 0xFFFFFFFF)),
    "bad permission bits": acl_xattr((1, 0o17, 0xFFFFFFFF), (4, 4, 0xFFFFFFFF),
                                     (0x20, 0, 0xFFFFFFFF)),
}


def test_malformed_acl_xattrs_are_refused(roots):
    def scenario(root: Path) -> dict[str, Any]:
        f = root / "f"
        f.write_text("x")
        f.chmod(0o644)
        out = {name: outcome(os.setxattr, f, ACCESS, value) for name, value in MALFORMED.items()}
        out["mode after"] = mode_of(f)
        out["empty removes"] = outcome(os.setxattr, f, ACCESS, b"")
        out["default, bad"] = outcome(os.setxattr, root, DEFAULT, MALFORMED["two owners"])
        return out

    got = compare(roots, scenario)
    # a version other than 2 is "not supported", anything else malformed "invalid"
    assert got.pop("header only, bad version") == errno.errorcode[errno.EOPNOTSUPP]
    assert all(v == "EINVAL" for k, v in got.items() if k not in ("mode after", "empty removes")), got
    assert got["mode after"] == "0o644" and got["empty removes"] == "ok"


def test_who_may_set_an_acl_and_where(roots, as_nobody):
    valid = acl_xattr((1, 6, 0xFFFFFFFF), (2, 4, NOBODY), (4, 4, 0xFFFFFFFF),
                      (0x10, 4, 0xFFFFFFFF), (0x20, 0, 0xFFFFFFFF))

    def scenario(root: Path) -> dict[str, Any]:
        f = root / "rootfile"
        f.write_text("x")
        mine = root / "mine"
        mine.write_text("x")
        os.chown(mine, NOBODY, NOGROUP)
        os.symlink("rootfile", root / "link")
        os.mkfifo(root / "fifo")
        os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        return {
            "non-owner": outcome(as_nobody, os.setxattr, f, ACCESS, valid),
            "non-owner remove": outcome(as_nobody, os.removexattr, f, ACCESS),
            "owner nobody": outcome(as_nobody, os.setxattr, mine, ACCESS, valid),
            "symlink itself": outcome(os.setxattr, root / "link", ACCESS, valid,
                                      follow_symlinks=False),
            "symlink default": outcome(os.setxattr, root / "link", DEFAULT, valid,
                                       follow_symlinks=False),
            "default on a file": outcome(os.setxattr, f, DEFAULT, valid),
            "fifo": outcome(os.setxattr, root / "fifo", ACCESS, valid),
            "device": outcome(os.setxattr, root / "null", ACCESS, valid),
            "device acl": getfacl(root / "null"),
            "read as nobody": outcome(as_nobody, lambda: len(os.getxattr(mine, ACCESS))),
        }

    got = compare(roots, scenario)
    assert got["non-owner"] == "EPERM" and got["non-owner remove"] == "EPERM"
    assert got["owner nobody"] == "ok" and got["read as nobody"] == len(valid)
    assert got["symlink itself"] == errno.errorcode[errno.EOPNOTSUPP] and got["default on a file"] == "EACCES"
    assert got["fifo"] == "ok" and got["device"] == "ok"
    assert f"user:{NOBODY}:r--" in got["device acl"]


def test_setting_an_acl_drops_setgid_outside_the_group(roots, as_nobody):
    valid = acl_xattr((1, 7, 0xFFFFFFFF), (2, 5, 0), (4, 5, 0xFFFFFFFF),
                      (0x10, 5, 0xFFFFFFFF), (0x20, 0, 0xFFFFFFFF))

    def scenario(root: Path) -> dict[str, Any]:
        f = root / "sgid"
        f.write_text("x")
        os.chown(f, NOBODY, 0)                   # nobody owns it; group root, not his
        f.chmod(0o2750)
        by_owner = outcome(as_nobody, os.setxattr, f, ACCESS, valid)
        g = root / "sgid-root"
        g.write_text("x")
        g.chmod(0o2750)
        os.setxattr(g, ACCESS, valid)            # root may keep it
        return {"set": by_owner, "mode": mode_of(f), "root's": mode_of(g)}

    got = compare(roots, scenario)
    assert got == {"set": "ok", "mode": "0o750", "root's": "0o2750"}


def test_cp_preserves_acls_into_zsfs(roots):
    src = roots["tmpfs"] / "src"
    src.mkdir()
    (src / "f").write_text("x")
    setfacl("-m", f"u:{NOBODY}:r", src / "f")
    setfacl("-d", "-m", f"g:{NOGROUP}:rx", src)
    subprocess.run(["cp", "-a", str(src), str(roots["zsfs"] / "copy")], check=True)
    assert getfacl(roots["zsfs"] / "copy" / "f") == getfacl(src / "f")
    assert getfacl(roots["zsfs"] / "copy") == getfacl(src)


def test_without_the_acl_option_acls_are_unsupported(mount_zsfs):
    need("setfacl")
    m = mount_zsfs()
    (m / "f").write_text("x")
    r = subprocess.run(["setfacl", "-m", f"u:{NOBODY}:r", str(m / "f")],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "Operation not supported" in r.stderr
    assert stat.S_IMODE(os.stat(m / "f").st_mode) == 0o644


def test_acl_and_noxattr_refuse_each_other(tmp_path):
    import sys
    r = subprocess.run([sys.executable, "-m", "zsfs", str(tmp_path), "-o", "acl,noxattr"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr == ("zsfs: error: acl needs extended attributes: drop noxattr or acl\n")
