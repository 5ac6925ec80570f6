"""zsfs under systemd: Type=notify readiness and status, journal-friendly logs, and the
units in systemd/ checked by systemd-analyze verify.

systemd itself is not PID 1 on a test machine, so the service's side of the protocol
is played here: a datagram socket in $NOTIFY_SOCKET, and a $JOURNAL_STREAM naming
the file that zsfs's stderr goes to, as systemd sets them up for a service.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

try:
    from conftest import is_mounted, require_fuse, skip_or_fail, _try_unmount
except ImportError:  # tests/ imported as a package
    from tests.conftest import is_mounted, require_fuse, skip_or_fail, _try_unmount

REPO = Path(__file__).resolve().parent.parent
UNITS = REPO / "systemd"


class Notifications:
    """The receiving end of $NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.path = path

    def next(self, timeout: float) -> tuple[float, dict[str, str]]:
        self.sock.settimeout(timeout)
        data = self.sock.recv(65536).decode()
        return time.monotonic(), dict(line.split("=", 1) for line in data.splitlines())


@pytest.fixture
def service(tmp_path):
    """Start ``zsfs MNT -f`` as systemd would; yields (proc, mountpoint, notifications,
    stderr path)."""
    require_fuse()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    notes = Notifications(tmp_path / "notify")
    log = tmp_path / "stderr"
    started = []

    def start(opts: str = "size=64m", journal: bool = True) -> subprocess.Popen:
        with open(log, "wb") as err:
            st = os.fstat(err.fileno())
            env = dict(os.environ, NOTIFY_SOCKET=str(notes.path))
            if journal:
                env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
            proc = subprocess.Popen([sys.executable, "-m", "zsfs", str(mnt), "-f", "-o", opts],
                                    stdin=subprocess.DEVNULL, stdout=err, stderr=err, env=env)
        started.append(proc)
        return proc

    yield start, mnt, notes, log
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=15)
    _try_unmount(mnt)
    notes.sock.close()


def test_ready_once_the_mount_answers_then_status_and_stopping(service):
    start, mnt, notes, log = service
    proc = start("size=64m,mem_limit=32m")
    when, ready = notes.next(timeout=15)
    # the kernel mount exists and the daemon answers by the time READY=1 arrives
    assert ready["READY"] == "1"
    assert is_mounted(mnt) and os.listdir(mnt) == [".zsfs"]
    assert ready["STATUS"] == "ratio 0.00: 0B of data in 0B of RAM (mem_limit 32M), 0 files"
    (mnt / "f").write_bytes(b"status " * 100_000)
    os.sync()
    later, status = notes.next(timeout=15)
    assert set(status) == {"STATUS"} and 4 < later - when < 8
    assert status["STATUS"].endswith("(mem_limit 32M), 1 files")
    assert "683.6K of data in " in status["STATUS"]
    ratio = float(status["STATUS"].split()[1].rstrip(":"))
    assert ratio > 50                                     # 700 kB of one repeated word
    proc.terminate()
    _, stopping = notes.next(timeout=15)
    assert stopping == {"STOPPING": "1"}
    assert proc.wait(timeout=15) == 0


def test_journal_lines_carry_a_priority_and_no_timestamp(service):
    start, mnt, notes, log = service
    proc = start()
    notes.next(timeout=15)
    proc.terminate()
    assert proc.wait(timeout=15) == 0
    lines = log.read_text().splitlines()
    assert f"<6>zsfs.cli: mounted on {mnt}" in lines, lines
    assert "<6>zsfs.cli: SIGTERM received, unmounting" in lines
    assert all(line.startswith("<") for line in lines), lines


def test_without_the_journal_lines_keep_their_timestamps(service):
    start, mnt, notes, log = service
    proc = start(journal=False)
    notes.next(timeout=15)
    proc.terminate()
    assert proc.wait(timeout=15) == 0
    [line] = [ln for ln in log.read_text().splitlines() if "mounted on" in ln]
    assert line[:4].isdigit() and line[4] == "-" and " INFO zsfs.cli: mounted on " in line


def test_no_notify_socket_no_messages(mount_zsfs):
    # the ordinary fixture's daemon has no NOTIFY_SOCKET: serving works the same
    m = mount_zsfs()
    assert "NOTIFY_SOCKET" not in os.environ
    (m / "x").write_text("ok")
    assert (m / "x").read_text() == "ok"


def _verify(paths: list[Path], cwd: Path) -> subprocess.CompletedProcess:
    """systemd-analyze verify, with the repository's man pages on MANPATH (it checks
    that each Documentation=man: page exists)."""
    if shutil.which("systemd-analyze") is None:
        skip_or_fail("systemd-analyze is not installed")
    man8 = cwd / "manpath" / "man8"
    man8.mkdir(parents=True, exist_ok=True)
    for page in (REPO / "man").glob("*.8"):
        shutil.copy(page, man8)
    env = dict(os.environ, MANPATH=f"{cwd / 'manpath'}:")
    return subprocess.run(["systemd-analyze", "verify", *map(str, paths)], cwd=cwd,
                          capture_output=True, text=True, timeout=120, env=env)


def installed_units(tmp_path: Path, zsfs: str) -> list[Path]:
    """The units as make install writes them (ExecStart naming *zsfs*), under the
    names they are used by: an instance of the template, and tmp.mount."""
    service = tmp_path / "zsfs@mnt-scratch.service"
    text = (UNITS / "zsfs@.service").read_text()
    assert "\nExecStart=zsfs " in text
    service.write_text(text.replace("\nExecStart=zsfs ", f"\nExecStart={zsfs} "))
    mount = tmp_path / "tmp.mount"
    shutil.copy(UNITS / "zsfs-tmp.mount", mount)
    scrape = [tmp_path / "zsfs-prometheus.service", tmp_path / "zsfs-prometheus.timer"]
    for unit in scrape:
        shutil.copy(UNITS / unit.name, unit)
    return [service, mount, *scrape]


def test_units_pass_systemd_analyze_verify(tmp_path):
    zsfs = shutil.which("zsfs", path=str(Path(sys.executable).parent))
    assert zsfs, "the venv's zsfs command"
    units = installed_units(tmp_path, zsfs)
    r = _verify(units, tmp_path)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    text = units[0].read_text()
    assert "\nType=notify\n" in text and "\nNotifyAccess=main\n" in text


def test_verify_catches_a_broken_unit(tmp_path):
    # the check is real: a unit with a bad key and a missing command fails it
    units = installed_units(tmp_path, "/nonexistent/zsfs")
    units[0].write_text(units[0].read_text().replace("Type=notify", "Type=notifyy"))
    r = _verify(units[:1], tmp_path)
    assert r.returncode != 0
    assert "/nonexistent/zsfs" in r.stderr and "notifyy" in r.stderr


def test_prometheus_service_writes_the_textfile(mount_zsfs, tmp_path):
    m = mount_zsfs()
    (m / "f").write_text("scraped")
    unit = (UNITS / "zsfs-prometheus.service").read_text()
    [command] = [ln[len("ExecStart="):] for ln in unit.splitlines() if ln.startswith("ExecStart=")]
    assert command.startswith("/bin/sh -c '") and command.endswith("'")
    textfiles = tmp_path / "node-exporter"
    env = dict(os.environ, TEXTFILE_DIR=str(textfiles),
               PATH=f"{Path(sys.executable).parent}:/usr/bin:/bin")
    subprocess.run(["/bin/sh", "-c", command[len("/bin/sh -c '"):-1]], env=env, check=True,
                   timeout=60)
    assert [p.name for p in textfiles.iterdir()] == ["zsfs.prom"]     # no temporary left
    text = (textfiles / "zsfs.prom").read_text()
    assert f'zsfs_up{{mountpoint="{m.path}",fsname="zsfs"}} 1' in text
    assert f'zsfs_files{{mountpoint="{m.path}",fsname="zsfs"}} 1' in text
