"""Unit tests of zsfs.credentials (who a request's caller is) and of the tree's set-ID
and trusted.* rules that use it. The same rules are checked on real mounts against a
kernel tmpfs in test_fs_security.py."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time

import pytest

from zsfs.credentials import CAP_FSETID, CAP_SYS_ADMIN, Caller
from zsfs.tree import mode_after_change, mode_after_truncate, visible_xattrs

try:
    from conftest import skip_or_fail
except ImportError:  # tests/ imported as a package
    from tests.conftest import skip_or_fail

NOBODY, NOGROUP = 65534, 65534


class FakeCaller(Caller):
    """A caller whose groups and capabilities are given instead of read from /proc."""

    def __init__(self, uid, gid, groups=(), caps=()):
        super().__init__(uid, gid, 0)
        self._status = {"Groups": " ".join(map(str, groups)),
                        "CapEff": format(sum(1 << c for c in caps), "016x")}


def test_caller_of_this_process():
    me = Caller(os.getuid(), os.getgid(), os.getpid())
    with open("/proc/self/status") as f:
        caps = int(next(line for line in f if line.startswith("CapEff:")).split()[1], 16)
    assert me.capable(CAP_SYS_ADMIN) == bool(caps >> CAP_SYS_ADMIN & 1)
    assert me.capable(CAP_FSETID) == bool(caps >> CAP_FSETID & 1)
    assert me.in_group(os.getgid())
    for g in os.getgroups():
        assert me.in_group(g)
    assert not me.in_group(54321) or 54321 in os.getgroups()


def test_caller_of_an_unprivileged_process_with_groups():
    if os.getuid() != 0:
        skip_or_fail("needs root to start a process as nobody")
    if shutil.which("setpriv") is None:
        skip_or_fail("setpriv is not installed")
    p = subprocess.Popen(["setpriv", f"--reuid={NOBODY}", f"--regid={NOGROUP}",
                          "--groups=100,4242", "--", "sleep", "30"])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:     # until setpriv has exec'd sleep
            with open(f"/proc/{p.pid}/status") as f:   # setpriv may keep caps until exec
                status = f.read()
            if status.startswith("Name:\tsleep\n") and f"Uid:\t{NOBODY}" in status:
                break
            time.sleep(0.01)
        c = Caller(NOBODY, NOGROUP, p.pid)
        assert not c.capable(CAP_FSETID) and not c.capable(CAP_SYS_ADMIN)
        assert c.in_group(NOGROUP) and c.in_group(100) and c.in_group(4242)
        assert not c.in_group(0) and not c.in_group(42)
        assert c.in_group_or_capable(4242) and not c.in_group_or_capable(0)
    finally:
        p.kill()
        p.wait()


def test_caller_without_proc_falls_back_to_uid_zero():
    gone = Caller(NOBODY, NOGROUP, 0)          # thread id 0: outside our pid namespace
    assert not gone.capable(CAP_FSETID) and gone.in_group(NOGROUP) and not gone.in_group(0)
    assert Caller(0, 0, 0).capable(CAP_SYS_ADMIN)
    assert Caller(0, 0, 2**22 + 12345).capable(CAP_FSETID)   # no such process


NOBODY_CALLER = FakeCaller(NOBODY, NOGROUP, groups=[NOGROUP])
MEMBER_OF_ROOT = FakeCaller(NOBODY, NOGROUP, groups=[NOGROUP, 0])
FSETID = FakeCaller(NOBODY, NOGROUP, caps=[CAP_FSETID])


@pytest.mark.parametrize("mode, gid, caller, after", [
    (0o6777, 0, NOBODY_CALLER, 0o777),
    (0o4755, 0, NOBODY_CALLER, 0o755),
    (0o2777, 0, NOBODY_CALLER, 0o777),
    (0o2777, 0, MEMBER_OF_ROOT, 0o777),     # group-executable: cleared for anyone
    (0o2767, 0, NOBODY_CALLER, 0o767),      # not in the group
    (0o2767, 0, MEMBER_OF_ROOT, 0o2767),
    (0o2767, NOGROUP, NOBODY_CALLER, 0o2767),
    (0o6767, 0, MEMBER_OF_ROOT, 0o2767),
    (0o6777, 0, FSETID, 0o6777),
    (0o0777, 0, NOBODY_CALLER, 0o777),
])
def test_kill_set_id(mode, gid, caller, after):
    assert mode_after_truncate(stat.S_IFREG | mode, gid, caller) == stat.S_IFREG | after


@pytest.mark.parametrize("mode, old_gid, caller, after", [
    (0o2767, 0, NOBODY_CALLER, 0o767),
    (0o2745, 0, NOBODY_CALLER, 0o745),
    (0o2767, 0, MEMBER_OF_ROOT, 0o2767),
    (0o2767, 0, FSETID, 0o2767),
    (0o2767, NOGROUP, NOBODY_CALLER, 0o2767),
    (0o2777, 0, NOBODY_CALLER, 0o2777),     # with group-execute the kernel decides
    (0o4767, 0, NOBODY_CALLER, 0o4767),     # S_ISUID is never this rule's business
])
def test_kill_set_group_id(mode, old_gid, caller, after):
    assert mode_after_change(stat.S_IFREG | mode, old_gid, caller) == stat.S_IFREG | after


def test_set_id_rules_leave_directories_alone():
    d = stat.S_IFDIR | 0o2767
    assert mode_after_truncate(d, 0, NOBODY_CALLER) == mode_after_change(d, 0, NOBODY_CALLER) == d


def test_trusted_names_listed_only_for_cap_sys_admin():
    names = [b"user.a", b"trusted.t", b"security.s"]
    assert visible_xattrs(names, FakeCaller(0, 0, caps=[CAP_SYS_ADMIN])) == names
    assert visible_xattrs(names, FakeCaller(0, 0, caps=[CAP_FSETID])) == [
        b"user.a", b"security.s"]
    assert visible_xattrs(names, NOBODY_CALLER) == [b"user.a", b"security.s"]
    assert visible_xattrs(names, None) == [b"user.a", b"security.s"]

    class Unasked(Caller):
        def capable(self, cap):
            raise AssertionError("no trusted.* name: /proc is not read")
    assert visible_xattrs([b"user.a"], Unasked(NOBODY, NOGROUP, 1)) == [b"user.a"]
