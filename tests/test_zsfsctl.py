"""zsfsctl: the mount table, stats, compact, set, --prometheus, and its answers to bad
input, to paths that are not zsfs mounts and to mounts that no longer answer."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from zsfs import ctl
from zsfs.mounts import MountEntry, containing_mount, mount_table, unescape, zsfs_mounts

try:
    from conftest import require_fuse, start_mount, _try_unmount
except ImportError:  # tests/ imported as a package
    from tests.conftest import require_fuse, start_mount, _try_unmount

ZSFSCTL = [sys.executable, "-m", "zsfs.ctl"]


def zsfsctl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*ZSFSCTL, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def stats_file(mnt) -> dict[str, str]:
    text = (Path(mnt) / ".zsfs" / "stats").read_text()
    return {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in text.splitlines())}


def errors_about_others(stderr: str, *ours) -> list[str]:
    """stderr lines about our mounts; other zsfs mounts on a shared machine may be hung."""
    return [ln for ln in stderr.splitlines() if any(str(m) in ln for m in ours)]


# -- no mount needed --------------------------------------------------------------------------

@pytest.mark.parametrize("n,text", [(0, "0B"), (1023, "1023B"), (1024, "1K"), (1536, "1.5K"),
                                    (10 * 2**20, "10M"), (int(2.25 * 2**30), "2.2G"),
                                    (2**60, "1E")])
def test_human_sizes_as_util_linux_writes_them(n, text):
    assert ctl.human_size(n) == text


def test_column_lists():
    assert ctl.parse_columns(None, False) == list(ctl.DEFAULT_COLUMNS)
    assert ctl.parse_columns("ratio,mountpoint", False) == ["RATIO", "MOUNTPOINT"]
    assert ctl.parse_columns("+RSS", False) == [*ctl.DEFAULT_COLUMNS, "RSS"]
    assert ctl.parse_columns(None, True) == list(ctl.COLUMNS)
    with pytest.raises(ValueError, match="unknown column: 'NOPE'"):
        ctl.parse_columns("DATA,nope", False)


def test_mountinfo_escapes_and_containing_mount(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text(
        "22 1 0:21 / / rw - ext4 /dev/sda1 rw\n"
        "40 22 0:50 / /mnt/with\\040space rw,nosuid - fuse.zsfs zsfs rw,user_id=0,group_id=0\n"
        "41 22 0:51 / /mnt/z rw - fuse.zsfs pool rw,user_id=1000,group_id=1000\n"
        "42 22 0:52 / /mnt/z rw - tmpfs tmpfs rw\n")
    table = mount_table(str(info))
    assert unescape("a\\040b\\134c") == "a b\\c"
    assert [e.mountpoint for e in table] == ["/", "/mnt/with space", "/mnt/z", "/mnt/z"]
    # /mnt/z's zsfs is hidden by the tmpfs mounted over it
    assert [e.mountpoint for e in zsfs_mounts(table)] == ["/mnt/with space"]
    assert containing_mount("/mnt/with space/a/b", table).fstype == "fuse.zsfs"
    assert containing_mount("/mnt/with spaces", table).mountpoint == "/"
    assert containing_mount("/mnt/z/x", table).fstype == "tmpfs"
    assert table[2].super_option("user_id") == "1000" and table[2].super_option("x") is None


def test_call_with_timeout_gives_up_and_reraises():
    started = time.monotonic()
    with pytest.raises(ctl.CtlError, match="not answering after 0.2 s"):
        ctl.call_with_timeout(lambda: time.sleep(30), 0.2, "/somewhere")
    assert time.monotonic() - started < 2
    with pytest.raises(FileNotFoundError):
        ctl.call_with_timeout(lambda: open("/nonexistent/x"), 1, "x")
    assert ctl.call_with_timeout(lambda: 42, 1, "x") == 42


# name -> (arguments, fragment of the one error line)
BAD_INPUT = {
    "unknown column": (["-o", "DATA,BOGUS"], "unknown column: 'BOGUS'"),
    "stats without a mount": (["stats"], "stats takes one MOUNT, not 0"),
    "stats of two mounts": (["stats", "/a", "/b"], "stats takes one MOUNT, not 2"),
    "compact without a mount": (["compact"], "compact takes one MOUNT"),
    "set without pairs": (["set", "/"], "set takes a MOUNT and at least one KEY=VALUE"),
    "set with no =": (["set", "/", "mem_limit"], "'mem_limit' is not KEY=VALUE"),
    "set of a path-like key": (["set", "/", "../stats=1"], "'../stats' is not a key"),
    "set of an empty key": (["set", "/", "=1"], "'=1' is not KEY=VALUE"),
    "count without watch": (["-c", "3"], "--count needs --watch"),
    "json and raw": (["-J", "-r"], "--json and --raw do not go together"),
    "zero watch": (["stats", "/", "-w", "0"], "'0' is outside 0.05..86400 seconds"),
    "watch of words": (["-w", "soon"], "not a number of seconds: 'soon'"),
    "watch with set": (["set", "/", "mem_limit=1G", "-w", "1"], "--watch does not go with set"),
    "prometheus with stats": (["--prometheus", "stats", "/"], "--prometheus and stats"),
    "unknown flag": (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    "bad timeout": (["-t", "-1"], "-t/--timeout"),
}


@pytest.mark.parametrize("name", BAD_INPUT)
def test_bad_input_gets_one_line_and_status_2(name):
    args, fragment = BAD_INPUT[name]
    r = zsfsctl(*args)
    assert r.returncode == 2, r
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("zsfsctl: error: "), r.stderr
    assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("command", ["stats", "compact", "list"])
def test_a_path_that_is_not_a_zsfs_mount(command, tmp_path):
    args = [str(tmp_path)] if command == "list" else [command, str(tmp_path)]
    r = zsfsctl(*args)
    assert r.returncode == 1
    assert f"zsfsctl: {tmp_path}: not a zsfs mount (it is on " in r.stderr, r.stderr
    r = zsfsctl(*[a.replace(str(tmp_path), str(tmp_path / "missing")) for a in args])
    assert r.returncode == 1 and "No such file or directory" in r.stderr


def test_set_on_a_path_that_is_not_a_zsfs_mount_writes_nothing(tmp_path):
    r = zsfsctl("set", tmp_path, "mem_limit=1G")
    assert r.returncode == 1 and "not a zsfs mount" in r.stderr
    assert list(tmp_path.iterdir()) == []


# -- on real mounts -----------------------------------------------------------------------------

def test_lists_every_mount_with_the_default_columns(mount_zsfs):
    a, b = mount_zsfs(), mount_zsfs("fsname=second,mem_limit=64m")
    (a / "f").write_bytes(b"x" * 100_000)
    r = zsfsctl("-t", "3")
    assert r.stdout.splitlines()[0].split() == list(ctl.DEFAULT_COLUMNS)
    rows = {ln.split()[0]: ln.split() for ln in r.stdout.splitlines()[1:]}
    assert str(a.path) in rows and str(b.path) in rows, r.stdout
    assert not errors_about_others(r.stderr, a.path, b.path), r.stderr
    assert rows[str(b.path)][4] == "64M" and rows[str(a.path)][4] == "0B"
    assert rows[str(a.path)][7] == "1"                       # FILES
    # ours answer; a non-zero status can only come from others' mounts on this machine
    assert r.returncode == 0 or r.stderr.strip()


def test_bytes_raw_noheadings_and_output_columns(mount_zsfs):
    m = mount_zsfs()
    (m / "f").write_bytes(os.urandom(50_000) + bytes(100_000))
    r = zsfsctl("-b", "-r", "-n", "-o", "MOUNTPOINT,DATA,COMPR,TOTAL,FRAG,RATIO,FILES,INODES",
                m.path)
    assert r.returncode == 0, r.stderr
    fields = r.stdout.split()
    s = stats_file(m.path)
    assert fields == [str(m.path), s["orig_data_size"], s["compr_data_size"],
                      s["mem_used_total"], s["frag_ratio"], s["compression_ratio"], "1", "2"]
    r = zsfsctl("-o", "+SOURCE,RSS", m.path)
    assert r.stdout.splitlines()[0].split() == [*ctl.DEFAULT_COLUMNS, "SOURCE", "RSS"]
    assert re.fullmatch(r"[\d.]+[KMG]", r.stdout.splitlines()[1].split()[-1]), r.stdout


def test_raw_escapes_blanks_in_mount_points(mount_zsfs, tmp_path):
    m = mount_zsfs()
    spaced = tmp_path / "a b"
    spaced.mkdir()
    subprocess.run(["mount", "--bind", str(m.path), str(spaced)], check=True)
    try:
        r = zsfsctl("-r", "-n", "-o", "MOUNTPOINT,FILES", spaced)
        assert r.returncode == 0, r.stderr
        assert r.stdout == f"{str(spaced).replace(' ', chr(92) + 'x20')} 0\n"
    finally:
        subprocess.run(["umount", str(spaced)], check=True)


def test_json_follows_util_linux(mount_zsfs):
    m = mount_zsfs("mem_limit=1g")
    (m / "d").mkdir()
    (m / "d" / "f").write_bytes(b"abc" * 10000)
    r = zsfsctl("-J", m.path / "d")                 # a path inside the mount will do
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    [row] = doc["zsfsctl"]
    assert set(row) == {c.lower() for c in ctl.DEFAULT_COLUMNS}
    assert row["mountpoint"] == str(m.path) and row["limit"] == "1G" and row["files"] == 1
    assert isinstance(row["ratio"], float) and isinstance(row["frag"], float)
    [row] = json.loads(zsfsctl("-J", "-b", m.path).stdout)["zsfsctl"]
    assert row["limit"] == 2**30 and row["data"] == 30000


def test_stats_human_bytes_and_json(mount_zsfs):
    m = mount_zsfs("mem_limit=512m")
    (m / "f").write_bytes(b"zsfs " * 40000)
    r = zsfsctl("stats", m.path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"{m.path} (zsfs):"
    shown = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    s = stats_file(m.path)
    assert list(shown) == list(s)                       # every line of stats, in order
    assert shown["mem_limit"] == "512M" and shown["orig_data_size"] == "195.3K"
    assert shown["frag_ratio"].endswith("%") and shown["files"] == "1"
    exact = zsfsctl("stats", "--bytes", m.path).stdout.splitlines()[1:]
    assert {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in exact)
            }["mem_limit"] == str(512 * 2**20)
    [item] = json.loads(zsfsctl("stats", "-J", m.path).stdout)["zsfsctl"]
    assert item["mountpoint"] == str(m.path)
    assert item["stats"]["orig_data_size"] == 200000 and item["stats"]["chunk_size"] == 16384


def test_watch_shows_live_values(mount_zsfs):
    m = mount_zsfs()
    proc = subprocess.Popen([*ZSFSCTL, "stats", str(m.path), "-w", "0.3", "-b"],
                            stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        (m / "f").write_bytes(b"q" * 12345)
        time.sleep(1.0)
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0                        # Ctrl-C ends a watch cleanly
    heads = [ln for ln in out.splitlines() if ln.startswith("Every 0.3s: zsfsctl stats")]
    assert len(heads) >= 4, out
    sizes = re.findall(r"orig_data_size:\s+(\d+)", out)
    assert sizes[0] == "0" and sizes[-1] == "12345", sizes


def test_watch_count_stops(mount_zsfs):
    m = mount_zsfs()
    r = zsfsctl("-w", "0.1", "-c", "3", m.path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("Every 0.1s: zsfsctl list") == 3
    assert r.stdout.count(str(m.path)) == 6             # header line and row, thrice


def test_compact_reports_what_it_freed(mount_zsfs):
    m = mount_zsfs("compact_threshold=0")
    for i in range(400):
        (m / f"f{i}").write_bytes(os.urandom(300) * 3)
    for i in range(0, 400, 2):
        (m / f"f{i}").unlink()
    before = int(stats_file(m.path)["compactions_manual"])
    r = zsfsctl("compact", m.path)
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(rf"{m.path}: compacted \d+ pages; memory \S+ -> \S+, "
                        r"frag [\d.]+% -> [\d.]+%\n", r.stdout), r.stdout
    assert int(stats_file(m.path)["compactions_manual"]) == before + 1
    assert int(r.stdout.split("compacted ")[1].split()[0]) > 0


def test_set_applies_every_key(mount_zsfs):
    m = mount_zsfs()
    r = zsfsctl("set", m.path, "mem_limit=1G", "compact_threshold=0.9", "compact_interval=2.5")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    control = m.path / ".zsfs"
    assert (control / "mem_limit").read_text() == f"{2**30}\n"
    assert (control / "compact_threshold").read_text() == "0.9\n"
    assert (control / "compact_interval").read_text() == "2.5\n"


def test_set_reports_each_bad_key_and_applies_the_rest(mount_zsfs):
    m = mount_zsfs()
    r = zsfsctl("set", m.path, "mem_limit=lots", "compact_interval=7", "mem_used_max=5",
                "level=3", "stats=0", "compact_threshold=2")
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert len(lines) == 5, r.stderr
    assert lines[0] == (f"zsfsctl: {m.path}: mem_limit=lots: invalid value "
                        "(zsfs(8) gives each key's syntax and range)")
    assert "mem_used_max=5: invalid value" in lines[1]
    for line, key in zip(lines[2:4], ("level", "stats")):      # no file, read-only file
        assert line.startswith(f"zsfsctl: {m.path}: {key}: no such setting (settable: ")
        assert all(k in line for k in ctl.SETTABLE)
    assert "compact_threshold=2: invalid value" in lines[4]
    control = m.path / ".zsfs"
    assert (control / "compact_interval").read_text() == "7\n"
    assert (control / "mem_limit").read_text() == "0\n"
    assert (control / "compact_threshold").read_text() == "0.95\n"


def test_prometheus_text_format(mount_zsfs):
    m = mount_zsfs("fsname=pool\"1")
    (m / "f").write_bytes(b"metrics " * 5000)
    r = zsfsctl("--prometheus", "-t", "3")
    families = {f.name: f for f in text_string_to_metric_families(r.stdout)}
    ours = {"mountpoint": str(m.path), "fsname": 'pool"1'}

    def value(name: str, **extra) -> float:
        family = families[name.removesuffix("_total")]     # counters' families drop it
        [v] = [s.value for s in family.samples
               if s.labels == {**ours, **extra} and s.name == name]
        return v

    s = stats_file(m.path)
    assert value("zsfs_up") == 1
    assert value("zsfs_orig_data_size_bytes") == 40000
    assert value("zsfs_mem_used_total_bytes") == int(s["mem_used_total"])
    assert value("zsfs_frag_ratio") == pytest.approx(float(s["frag_ratio"]) / 100)
    assert value("zsfs_files") == 1
    assert families["zsfs_pages_compacted"].type == "counter"   # parser drops _total
    assert value("zsfs_requests_total", opcode="write") >= 1
    # one HELP and TYPE per metric, every stats line exported
    assert r.stdout.count("# TYPE zsfs_files ") == 1
    exported = {ctl.PROMETHEUS.get(k, (f"zsfs_{k}",))[0] for k in s}   # new lines too
    assert exported <= {s.name for f in families.values() for s in f.samples}


# -- mounts that do not answer ----------------------------------------------------------------

def test_a_stopped_daemon_times_out_instead_of_hanging(mount_zsfs):
    alive, stopped = mount_zsfs(), mount_zsfs()
    os.kill(stopped.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        r = zsfsctl("-t", "0.5", alive.path, stopped.path, timeout=30)
        took = time.monotonic() - started
        assert r.returncode == 1
        assert f"zsfsctl: {stopped.path}: not answering after 0.5 s" in r.stderr
        assert str(alive.path) in r.stdout and str(stopped.path) not in r.stdout
        assert took < 10, took
        r = zsfsctl("stats", "-t", "0.5", stopped.path, timeout=30)
        assert r.returncode == 1 and "not answering" in r.stderr and r.stdout == ""
        r = zsfsctl("--prometheus", "-t", "0.5", alive.path, stopped.path, timeout=30)
        up = {s.labels["mountpoint"]: s.value
              for f in text_string_to_metric_families(r.stdout) if f.name == "zsfs_up"
              for s in f.samples}
        assert up == {str(alive.path): 1, str(stopped.path): 0}
        r = zsfsctl("set", "-t", "0.5", stopped.path, "mem_limit=1G", timeout=30)
        assert r.returncode == 1 and "not answering" in r.stderr
    finally:
        os.kill(stopped.pid, signal.SIGCONT)


@pytest.fixture
def dead_mount(tmp_path):
    """A zsfs mount whose daemon was killed: every access fails with ENOTCONN."""
    require_fuse()
    mp = tmp_path / "dead"
    mp.mkdir()
    m = start_mount(mp, "", tmp_path / "daemon.log")
    m.watchdog.cancel()
    m.proc.kill()
    m.proc.wait()
    yield mp
    subprocess.run(["fusermount3", "-uz", str(mp)], capture_output=True)
    assert _try_unmount(mp)


def test_a_dead_mount_says_so(dead_mount):
    r = zsfsctl("stats", dead_mount)
    assert r.returncode == 1
    assert r.stderr == (f"zsfsctl: {dead_mount}: not answering: its daemon is gone (unmount "
                        f"it with 'umount -l {dead_mount}' or 'fusermount3 -uz {dead_mount}')\n")
    r = zsfsctl("-b", dead_mount)
    assert r.returncode == 1 and "its daemon is gone" in r.stderr


def test_another_users_mount_without_allow_other(mount_zsfs, as_nobody):
    m = mount_zsfs()

    def look() -> str:
        try:
            ctl.Mount(ctl.resolve(str(m.path), 3).entry, 3).stats()
        except ctl.CtlError as e:
            return str(e)
        return "no error"

    assert as_nobody(look) == (f"{m.path}: permission denied: mounted by uid 0 without "
                               "allow_other, so only that user can reach it")
