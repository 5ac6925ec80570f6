"""``make install`` and ``make uninstall``, and what they make work: mount(8) and fstab
finding zsfs, the man pages, the systemd unit, and ordinary users mounting through
fusermount3.

The layout is tested in a scratch DESTDIR, then used for real inside a private mount
namespace (``unshare -m``) where that DESTDIR's ``usr/local`` is bind-mounted over
``/usr/local``: mount.fuse3 then finds ``/usr/local/bin/zsfs`` as on an installed
system, and nothing outside the test sees it. In CI (CI=true) the real thing also
runs: ``make install`` into /usr/local, then ``make uninstall``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

try:
    from conftest import is_mounted, require_fuse, skip_or_fail, _try_unmount
except ImportError:  # tests/ imported as a package
    from tests.conftest import is_mounted, require_fuse, skip_or_fail, _try_unmount

REPO = Path(__file__).resolve().parent.parent
NOBODY, NOGROUP = 65534, 65534
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
INSTALLED = ["bin/zsfs", "bin/zsfsctl", "share/man/man8/zsfs.8", "share/man/man8/zsfsctl.8",
             "lib/systemd/system/zsfs@.service", "share/zsfs/zsfs-tmp.mount",
             "lib/systemd/system/zsfs-prometheus.service",
             "lib/systemd/system/zsfs-prometheus.timer",
             "lib/zsfs/zsfs/cli.py", "lib/zsfs/zsfs/ctl.py", "lib/zsfs/pyfuse3",
             "lib/zsfs/trio", "lib/zsfs/zstandard"]


def make(*args: str, stage: Path) -> subprocess.CompletedProcess:
    if shutil.which("make") is None:
        skip_or_fail("make is not installed")
    r = subprocess.run(["make", "-C", str(REPO), *args, f"STAGE={stage}"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"make {' '.join(args)}:\n{r.stdout}\n{r.stderr}"
    return r


def world_readable_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for p in [path, *path.parents]:
        if str(p) in ("/", "/tmp"):
            break
        p.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def destdir(tmp_path_factory) -> Path:
    """``make install DESTDIR=...`` (the default PREFIX, /usr/local)."""
    root = tmp_path_factory.mktemp("install")
    make("install", f"DESTDIR={root / 'dest'}", stage=root / "stage")
    return root / "dest"


@pytest.fixture(scope="module")
def prefix(tmp_path_factory) -> Path:
    """``make install PREFIX=...`` in a directory every user can read: a zsfs that
    user nobody can run (the venv's interpreter lives under /root, which they cannot)."""
    root = world_readable_dir(Path(tmp_path_factory.mktemp("prefix")))
    make("install", f"PREFIX={root / 'usr'}", stage=root / "stage")
    world_readable_dir(root / "usr")
    return root / "usr"


def test_install_layout_in_a_scratch_destdir(destdir):
    local = destdir / "usr" / "local"
    for rel in INSTALLED:
        assert (local / rel).exists(), rel
    for tool in ("zsfs", "zsfsctl"):
        script = (local / "bin" / tool).read_text()
        assert script.startswith("#!/usr/bin/python3 -I\n"), script
        assert 'sys.path.insert(0, "/usr/local/lib/zsfs")' in script   # no DESTDIR inside
        assert stat.S_IMODE((local / "bin" / tool).stat().st_mode) == 0o755
    unit = (local / "lib/systemd/system/zsfs@.service").read_text()
    assert "\nExecStart=/usr/local/bin/zsfs %f -f -o ${ZSFS_OPTIONS}\n" in unit
    assert "\nType=notify\n" in unit
    assert str(destdir) not in unit


def test_uninstall_removes_everything(tmp_path):
    dest = tmp_path / "dest"
    make("install", f"DESTDIR={dest}", stage=tmp_path / "stage")
    make("uninstall", f"DESTDIR={dest}", stage=tmp_path / "stage")
    left = [p for p in dest.rglob("*") if not p.is_dir()]
    assert left == [], left


def in_namespace(destdir: Path, script: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a bash script in a private mount namespace with destdir's /usr/local."""
    require_fuse()
    if shutil.which("unshare") is None:
        skip_or_fail("unshare is not installed (util-linux)")
    prologue = textwrap.dedent(f"""\
        set -euo pipefail
        export PATH={SYSTEM_PATH}
        mount --bind {destdir}/usr/local /usr/local
        """)
    return subprocess.run(["unshare", "-m", "--propagation", "private", "bash", "-c",
                           prologue + textwrap.dedent(script)],
                          capture_output=True, text=True, timeout=timeout,
                          cwd="/")   # mount(8) would take a ./zsfs directory for the source


def test_installed_zsfs_works_with_mount_fstab_man_and_systemd(destdir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    fstab = tmp_path / "fstab"
    fstab.write_text(f"zsfs-fstab  {b}  fuse.zsfs  size=64m,mode=0750,noauto  0 0\n")
    verify = "systemd-analyze verify /usr/local/lib/systemd/system/zsfs@.service" \
        if shutil.which("systemd-analyze") else "true"
    units = tmp_path / "units"
    r = in_namespace(destdir, f"""
        command -v zsfs zsfsctl
        zsfs --version
        mount -t fuse.zsfs zsfs {a} -o size=1G
        echo data > {a}/file
        cat {a}/file
        mount -T {fstab} {b}
        stat -c %a {b}
        zsfsctl -r -n -b -o MOUNTPOINT,SOURCE,FILES {a} {b}
        man -w zsfs zsfsctl
        mkdir {units}
        cp /usr/local/lib/systemd/system/zsfs@.service {units}/zsfs@mnt-x.service
        cp /usr/local/lib/systemd/system/zsfs-prometheus.* {units}/
        (cd {units} && {verify.replace('/usr/local/lib/systemd/system/zsfs@.service',
                                       'zsfs@mnt-x.service zsfs-prometheus.service '
                                       'zsfs-prometheus.timer')})
        umount {a}
        umount {b}
        echo done
        """)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[:2] == ["/usr/local/bin/zsfs", "/usr/local/bin/zsfsctl"]
    assert out[2] == "zsfs 0.1.0"
    assert out[3] == "data" and out[4] == "750"
    assert out[5:7] == [f"{a} zsfs 1", f"{b} zsfs-fstab 0"]
    assert out[7:9] == ["/usr/local/share/man/man8/zsfs.8", "/usr/local/share/man/man8/zsfsctl.8"]
    assert out[-1] == "done" and r.stderr == ""
    assert not is_mounted(a) and not is_mounted(b)      # never visible out here


def test_real_install_in_ci(tmp_path):
    """make install into /usr/local for real (CI, or ZSFS_TEST_REAL_INSTALL=1)."""
    if os.environ.get("CI") != "true" and os.environ.get("ZSFS_TEST_REAL_INSTALL") != "1":
        pytest.skip("installs into /usr/local: only in CI or with ZSFS_TEST_REAL_INSTALL=1")
    require_fuse()
    was_there = Path("/usr/local/bin/zsfs").exists()
    make("install", stage=tmp_path / "stage")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        env = dict(os.environ, PATH=SYSTEM_PATH)
        subprocess.run(["mount", "-t", "fuse.zsfs", "zsfs", str(mnt), "-o", "size=1G"],
                       check=True, env=env, timeout=60, cwd="/")
        (mnt / "f").write_text("installed")
        r = subprocess.run(["zsfsctl", "-n", "-r", "-o", "MOUNTPOINT,FILES", str(mnt)],
                           capture_output=True, text=True, env=env, timeout=60)
        assert r.stdout == f"{mnt} 1\n", r.stderr
        page = subprocess.run(["man", "-w", "zsfs"], capture_output=True, text=True,
                              env=env).stdout.strip()        # Debian: /usr/local/man -> share/man
        assert os.path.realpath(page) == "/usr/local/share/man/man8/zsfs.8", page
        if shutil.which("systemd-analyze"):
            units = tmp_path / "units"
            units.mkdir()
            shutil.copy("/usr/local/lib/systemd/system/zsfs@.service",
                        units / "zsfs@mnt-x.service")
            v = subprocess.run(["systemd-analyze", "verify", "zsfs@mnt-x.service"],
                               cwd=units, capture_output=True, text=True, timeout=120)
            assert v.returncode == 0 and v.stderr == "", v.stderr
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
        if not was_there:
            make("uninstall", stage=tmp_path / "stage")
    assert was_there or not Path("/usr/local/bin/zsfs").exists()


# -- ordinary users ---------------------------------------------------------------------------

@contextlib.contextmanager
def dev_fuse_mode(mode: int):
    """/dev/fuse as Debian ships it (0666) for the test, then as it was."""
    old = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
    os.chmod("/dev/fuse", mode)
    try:
        yield
    finally:
        os.chmod("/dev/fuse", old)


@contextlib.contextmanager
def fuse_conf(user_allow_other: bool):
    """/etc/fuse.conf with or without user_allow_other, restored afterwards."""
    path = Path("/etc/fuse.conf")
    old = path.read_text() if path.exists() else None
    lines = [ln for ln in (old or "").splitlines() if ln.strip() != "user_allow_other"]
    path.write_text("\n".join(lines + (["user_allow_other"] if user_allow_other else []))
                    + "\n")
    try:
        yield
    finally:
        if old is None:
            path.unlink()
        else:
            path.write_text(old)


def as_nobody(*argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOGROUP}",
                           "--clear-groups", "env", "HOME=/", f"PATH={SYSTEM_PATH}",
                           *map(str, argv)], capture_output=True, text=True, cwd="/",
                          timeout=60, **kw)


@pytest.fixture
def nobody_mountpoint(tmp_path) -> Path:
    require_fuse()
    if shutil.which("fusermount3") is None:
        skip_or_fail("fusermount3 is not installed (fuse3)")
    mnt = world_readable_dir(tmp_path / "nobody") / "mnt"
    mnt.mkdir()
    os.chown(mnt, NOBODY, NOGROUP)
    yield mnt
    if is_mounted(mnt):
        as_nobody("fusermount3", "-u", mnt)
        _try_unmount(mnt)


def wait_unmounted(path: Path, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while is_mounted(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not is_mounted(path)


def test_an_ordinary_user_mounts_through_fusermount3(prefix, nobody_mountpoint):
    mnt = nobody_mountpoint
    with dev_fuse_mode(0o666):
        r = as_nobody(prefix / "bin/zsfs", mnt, "-o", "size=64m")
        assert r.returncode == 0, r.stderr
        assert is_mounted(mnt)
        with open("/proc/self/mountinfo") as f:
            [line] = [ln for ln in f if f" {mnt} " in ln]
        assert " fuse.zsfs zsfs " in line and "user_id=65534" in line
        r = as_nobody("sh", "-c", f"echo mine > {mnt}/f && cat {mnt}/f && stat -c %U {mnt}")
        assert r.stdout == "mine\nnobody\n", r.stderr
        # without allow_other nobody else gets in, root included
        with pytest.raises(PermissionError):
            os.listdir(mnt)
        r = subprocess.run([sys.executable, "-m", "zsfs.ctl", str(mnt)], capture_output=True,
                           text=True)
        assert r.returncode == 1 and "mounted by uid 65534 without allow_other" in r.stderr
        r = as_nobody(prefix / "bin/zsfsctl", "-n", "-r", "-o", "MOUNTPOINT,FILES", mnt)
        assert r.stdout == f"{mnt} 1\n", r.stderr
        assert as_nobody("fusermount3", "-u", mnt).returncode == 0
        assert wait_unmounted(mnt)


def test_allow_other_needs_user_allow_other(prefix, nobody_mountpoint):
    mnt = nobody_mountpoint
    with dev_fuse_mode(0o666), fuse_conf(user_allow_other=False):
        r = as_nobody(prefix / "bin/zsfs", mnt, "-o", "allow_other")
        assert r.returncode == 1 and not is_mounted(mnt)
        assert r.stderr.count("\n") == 1, r.stderr
        assert r.stderr.startswith(f"zsfs: error: cannot mount '{mnt}': ")
        assert "user_allow_other" in r.stderr and "/etc/fuse.conf" in r.stderr
    with dev_fuse_mode(0o666), fuse_conf(user_allow_other=True):
        r = as_nobody(prefix / "bin/zsfs", mnt, "-o", "allow_other,size=64m")
        assert r.returncode == 0, r.stderr
        try:
            (mnt / "from-root").write_text("root may enter now")   # mode 1777 root dir
            assert (mnt / "from-root").read_text() == "root may enter now"
        finally:
            assert as_nobody("fusermount3", "-u", mnt).returncode == 0
        assert wait_unmounted(mnt)


def test_without_access_to_dev_fuse_the_error_is_one_line(prefix, nobody_mountpoint):
    with dev_fuse_mode(0o600):
        r = as_nobody(prefix / "bin/zsfs", nobody_mountpoint)
    assert r.returncode == 1 and not is_mounted(nobody_mountpoint)
    assert r.stderr.count("\n") == 1 and "/dev/fuse" in r.stderr, r.stderr
