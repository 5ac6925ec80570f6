"""Recompression on real mounts: ``.zsfs/recompress``, ``recompress_idle``,
``recompress_level``, ``dictionary``, the stats lines, the mount options, and data
that stays byte-exact through recompression, retraining, compaction and mem_limit
(the model-based random tester, fsmodel.py, run with recompression forced on)."""

from __future__ import annotations

import errno
import os
import random
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

import fsmodel
from conftest import expect_errno, read_file, skip_or_fail, wait_for, zsfs_argv
from test_fs_control import istats, read_ctl, write_ctl, write_file

PAGE = 4096
CHUNK = 16384
STDLIB = Path(os.__file__).parent


@pytest.fixture
def mount(mount_zsfs):
    return mount_zsfs


def stdlib_sources(count: int) -> list[Path]:
    """Text to compress and to train a dictionary on: the standard library's modules."""
    files = sorted(p for p in STDLIB.glob("*.py") if p.stat().st_size > 2000)
    return files[:count]


def fill(m) -> dict[Path, bytes]:
    """Every kind of chunk: text (zstd), noise (raw), zeros and a fill (no object),
    a sparse file, a file cut inside a chunk (its object keeps a stale tail)."""
    files: dict[Path, bytes] = {}
    os.mkdir(m / "lib")
    for src in stdlib_sources(250):
        files[m / "lib" / src.name] = src.read_bytes()
    rng = random.Random(5)
    files[m / "noise"] = rng.randbytes(200_000)
    files[m / "zeros"] = bytes(300_000)
    files[m / "fill"] = b"\xab" * 70_000
    for path, data in files.items():
        write_file(path, data)
    with open(m / "sparse", "wb") as f:
        f.seek(5 * CHUNK + 100)
        f.write(b"tail of a sparse file\n")
    files[m / "sparse"] = bytes(5 * CHUNK + 100) + b"tail of a sparse file\n"
    text = b"".join(p.read_bytes() for p in stdlib_sources(20))[:3 * CHUNK]
    write_file(m / "cut", text)
    os.truncate(m / "cut", CHUNK + 1234)
    files[m / "cut"] = text[:CHUNK + 1234]
    return files


def check(files: dict[Path, bytes]) -> None:
    for path, data in files.items():
        assert read_file(path) == data, path


def dictionary_pages(s: dict[str, int]) -> int:
    return -(-s["dictionary_bytes"] // PAGE)


def test_recompress_all_keeps_every_byte_and_saves_memory(mount):
    m = mount()
    files = fill(m)
    s0 = istats(m)
    assert s0["recompressed_chunks"] == s0["recompress_saved_bytes"] == 0
    assert s0["dictionaries"] == s0["dictionary_bytes"] == s0["dictionary_chunks"] == 0
    write_ctl(m, "dictionary", "retrain\n")       # below the size that trains on its own
    s1 = istats(m)
    assert s1["dictionaries"] == 1 and 0 < s1["dictionary_bytes"]
    # the dictionary's memory counts in mem_used_total (and in mm_stat's)
    assert s1["mem_used_total"] == s0["mem_used_total"] + dictionary_pages(s1) * PAGE
    assert s1["mem_reserved"] == 0
    assert int(read_ctl(m, "mm_stat").split()[2]) == s1["mem_used_total"]
    assert s1["mem_used_max"] >= s1["mem_used_total"]
    write_ctl(m, "recompress", "all\n")            # returns when done
    s2 = istats(m)
    assert s2["recompressed_chunks"] > 100 and s2["dictionary_chunks"] > 100
    assert s2["recompress_saved_bytes"] == s1["compr_data_size"] - s2["compr_data_size"] > 0
    assert s2["mem_used_total"] < s1["mem_used_total"]
    assert s2["orig_data_size"] == s1["orig_data_size"] and s2["chunks"] == s1["chunks"]
    assert s2["staged_data_size"] == 0
    check(files)
    # everything has been through the current setting: nothing more to do
    write_ctl(m, "recompress", "all")
    write_ctl(m, "recompress", "idle")
    s3 = istats(m)
    assert s3["recompressed_chunks"] == s2["recompressed_chunks"]
    # rewriting recompressed chunks, then removing them, gives everything back
    for path in list(files)[:50]:
        data = files[path][::-1]
        write_file(path, data)
        files[path] = data
    check(files)
    for path in files:
        os.unlink(path)
    # (an unlinked file's chunks go when the kernel forgets the inode: soon, not at once)
    assert wait_for(lambda: istats(m)["chunks"] == 0, timeout=10)
    s4 = istats(m)
    assert s4["chunks"] == s4["dictionary_chunks"] == s4["orig_data_size"] == 0
    assert s4["dictionaries"] == 1                # the current one stays


def test_copies_share_their_objects_until_written(mount):
    """cp of a tree: recompression keeps one object for each chunk the copies share."""
    m = mount()
    files = fill(m)
    for name in ("noise", "cut", "fill", "zeros", "sparse"):
        for n in range(2):
            write_file(m / f"{name}.copy{n}", files[m / name])
            files[m / f"{name}.copy{n}"] = files[m / name]
    os.truncate(m / "noise.copy1", 3 * CHUNK + 5)      # a cut copy still shares
    files[m / "noise.copy1"] = files[m / "noise"][:3 * CHUNK + 5]
    s1 = istats(m)
    write_ctl(m, "recompress", "all")
    s2 = istats(m)
    # noise: 13 raw chunks (12 whole), 3 whole ones in the cut copy (its last chunk,
    # now 5 bytes, gets an object of its own); cut: 2 frames in each copy; fills and
    # holes hold no object
    assert s2["dedup_chunks"] >= 13 + 3 + 2 * 2
    assert s2["dedup_saved_bytes"] > (12 + 3) * CHUNK
    assert s2["recompress_saved_bytes"] == s1["compr_data_size"] - s2["compr_data_size"]
    assert s2["orig_data_size"] == s1["orig_data_size"] and s2["chunks"] == s1["chunks"]
    check(files)
    # a write to one copy, a cut of another: the others keep their bytes
    with open(m / "noise.copy0", "r+b") as f:
        f.seek(CHUNK + 10)
        f.write(b"written")
    files[m / "noise.copy0"] = files[m / "noise"][:CHUNK + 10] + b"written" + \
        files[m / "noise"][CHUNK + 17:]
    os.truncate(m / "cut.copy0", 100)
    files[m / "cut.copy0"] = files[m / "cut"][:100]
    check(files)
    assert istats(m)["dedup_chunks"] < s2["dedup_chunks"]
    for path in files:
        os.unlink(path)
    assert wait_for(lambda: istats(m)["chunks"] == 0, timeout=10)
    s3 = istats(m)
    assert s3["dedup_chunks"] == s3["dedup_saved_bytes"] == s3["compr_data_size"] == 0


def test_retrain_and_dictionary_off_keep_data(mount):
    m = mount("recompress_level=3")
    files = fill(m)
    write_ctl(m, "dictionary", "retrain")
    write_ctl(m, "recompress", "all")
    first = istats(m)
    write_ctl(m, "dictionary", "retrain")          # a second: the first lives on
    s = istats(m)
    assert s["dictionaries"] == 2 and s["dictionary_chunks"] == first["dictionary_chunks"]
    check(files)
    write_ctl(m, "recompress", "all")              # moves every chunk to the new one
    assert istats(m)["dictionaries"] == 1
    check(files)
    write_ctl(m, "dictionary", "off")
    assert read_ctl(m, "dictionary") == "off\n"
    write_ctl(m, "recompress", "all")              # moves every chunk off it: it goes
    s = istats(m)
    assert s["dictionaries"] == s["dictionary_bytes"] == s["dictionary_chunks"] == 0
    check(files)
    write_ctl(m, "dictionary", "on")
    assert read_ctl(m, "dictionary") == "on\n"
    write_ctl(m, "recompress_level", "9")
    write_ctl(m, "recompress", "idle")             # idle 300 s: nothing is that old yet
    assert istats(m)["dictionaries"] == 0
    write_ctl(m, "recompress_idle", "0.01")
    time.sleep(0.1)
    write_ctl(m, "recompress", "idle")
    check(files)


def test_control_files_take_their_syntax(mount):
    m = mount()
    assert read_ctl(m, "recompress_idle") == "300\n"
    assert read_ctl(m, "recompress_level") == "6\n"
    assert read_ctl(m, "dictionary") == "on\n"
    assert read_ctl(m, "recompress") == ""         # write-only (root may open it)
    # (an empty write(2) never reaches the daemon)
    for bad in ["\n", "1", "ALL", "Idle", "all\n\n", " all", "all ", "all\r\n", "idle,all",
                "retrain"]:
        expect_errno(errno.EINVAL, write_ctl, m, "recompress", bad)
    for good, shown in [("0", "0"), ("0.5", "0.5"), (".25", "0.25"), ("2592000", "2592000"),
                        ("10\n", "10"), ("0.01", "0.01")]:
        write_ctl(m, "recompress_idle", good)
        assert read_ctl(m, "recompress_idle") == shown + "\n"
    for bad in ["\n", "-1", "0.001", "2592001", "1e3", "nan", "inf", " 5", "5s", "+5", "5\n\n"]:
        expect_errno(errno.EINVAL, write_ctl, m, "recompress_idle", bad)
    assert read_ctl(m, "recompress_idle") == "0.01\n"        # a refused write changes nothing
    for good in ["1", "22", "9\n"]:
        write_ctl(m, "recompress_level", good)
        assert read_ctl(m, "recompress_level") == good.strip() + "\n"
    for bad in ["0", "23", "-1", "-5", "abc", "\n", "6.0", " 6", "1k"]:
        expect_errno(errno.EINVAL, write_ctl, m, "recompress_level", bad)
    assert read_ctl(m, "recompress_level") == "9\n"
    for bad in ["yes", "ON", "1", "\n", "retrain\n\n", "Retrain", "off "]:
        expect_errno(errno.EINVAL, write_ctl, m, "dictionary", bad)
    assert read_ctl(m, "dictionary") == "on\n"
    # nothing to train on
    expect_errno(errno.ENODATA, write_ctl, m, "dictionary", "retrain\n")
    write_file(m / "small", b"a few bytes\n")
    expect_errno(errno.ENODATA, write_ctl, m, "dictionary", "retrain")
    assert istats(m)["dictionaries"] == 0
    write_ctl(m, "recompress", "all")             # with nothing to do, it returns at once
    assert read_file(m / "small") == b"a few bytes\n"


def test_mount_options_and_background_recompression(mount):
    m = mount("recompress_idle=0.2,recompress_level=3,dictionary=off")
    assert read_ctl(m, "recompress_idle") == "0.2\n"
    assert read_ctl(m, "recompress_level") == "3\n"
    assert read_ctl(m, "dictionary") == "off\n"
    files = fill(m)
    # files left alone for 0.2 s are recompressed in the background
    assert wait_for(lambda: istats(m)["recompressed_chunks"] > 100, timeout=60)
    check(files)
    assert istats(m)["dictionaries"] == 0
    # a file being written is not idle: what it holds stays as written meanwhile
    with open(m / "busy", "wb") as f:
        for i in range(20):
            f.write(b"line %d of a file written slowly\n" % i * 50)
            f.flush()
            time.sleep(0.02)
    assert read_file(m / "busy") == b"".join(b"line %d of a file written slowly\n" % i * 50
                                             for i in range(20))
    write_ctl(m, "recompress_idle", "0")           # off
    n = istats(m)["recompressed_chunks"]
    write_file(m / "later", (STDLIB / "os.py").read_bytes())
    time.sleep(1)
    assert istats(m)["recompressed_chunks"] == n


@pytest.mark.parametrize("opt, message", [
    ("recompress_idle=0.001", "bad value for recompress_idle: '0.001'"),
    ("recompress_idle=-1", "bad value for recompress_idle: '-1'"),
    ("recompress_level=0", "bad value for recompress_level: '0' (1..22)"),
    ("recompress_level=23", "bad value for recompress_level: '23' (1..22)"),
    ("dictionary=yes", "bad value for dictionary: 'yes' (on or off)"),
    ("dictionary", "option 'dictionary' needs a value"),
])
def test_bad_recompression_options_refuse_to_mount(opt, message):
    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run(zsfs_argv(d, opt), capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_recompression_at_the_memory_limit(mount):
    m = mount()
    files = fill(m)
    s = istats(m)
    write_ctl(m, "compact", "1")
    limit = istats(m)["mem_used_total"]
    write_ctl(m, "mem_limit", str(limit))         # no room for a new zspage or a dictionary
    expect_errno(errno.ENOSPC, write_ctl, m, "dictionary", "retrain")
    write_ctl(m, "recompress", "all")
    s = istats(m)
    assert s["mem_used_total"] <= limit and s["dictionaries"] == 0
    check(files)
    write_ctl(m, "mem_limit", "0")
    write_ctl(m, "dictionary", "retrain")
    write_ctl(m, "mem_limit", str(istats(m)["mem_used_total"]))
    write_ctl(m, "recompress", "all")              # chunks that fit move, others wait
    assert istats(m)["mem_used_total"] <= istats(m)["mem_limit"]
    check(files)


# -- the model-based random tester with recompression forced on ----------------------------------

class Churning:
    """A thread that keeps recompression busy on a mount: ``all`` and ``idle`` passes,
    retraining, new levels, the dictionary off and on; it notes the most chunks it saw
    sharing an object."""

    def __init__(self, root: str, seed: int) -> None:
        self.root = root
        self.rng = random.Random(seed)
        self.done: dict[str, int] = {}
        self.most_shared = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Churning:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(120)

    def _write(self, name: str, value: str) -> None:
        fd = os.open(os.path.join(self.root, ".zsfs", name), os.O_WRONLY)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)

    def _loop(self) -> None:
        rng = self.rng
        while not self._stop.wait(rng.choice([0.01, 0.05, 0.1])):
            name, value = rng.choice([
                ("recompress", "all\n"), ("recompress", "idle\n"), ("recompress", "all\n"),
                ("dictionary", "retrain\n"), ("dictionary", "retrain\n"),
                ("dictionary", "off\n"), ("dictionary", "on\n"),
                ("recompress_level", f"{rng.choice([1, 3, 6, 9])}\n"),
            ])
            try:
                self._write(name, value)
                key = f"{name}={value.strip()}"
                self.done[key] = self.done.get(key, 0) + 1
                self.most_shared = max(self.most_shared, istats(self.root)["dedup_chunks"])
            except OSError as e:
                # too little data to train on, or no room under mem_limit: expected
                if not (name == "dictionary" and e.errno in (errno.ENODATA, errno.ENOSPC)):
                    self.errors.append(f"{name} <- {value.strip()}: {e}")


@pytest.fixture
def tmpfs_dir():
    d = tempfile.mkdtemp(prefix="zsfs-recompress-tmpfs-")
    try:
        fsmodel.mount_tmpfs(d)
    except RuntimeError as e:
        os.rmdir(d)
        skip_or_fail(str(e))
    try:
        yield d
    finally:
        fsmodel.umount(d)
        os.rmdir(d)


@pytest.mark.slow
@pytest.mark.parametrize("opts", [
    pytest.param("recompress_idle=0.01,compact_threshold=1.0,compact_interval=0.05",
                 id="recompression-and-compaction-forced"),
    pytest.param("recompress_idle=0.01,chunk_size=4k,mem_limit=3m", id="recompression-mem_limit"),
])
def test_random_operations_match_tmpfs_with_recompression_forced(mount_zsfs, tmpfs_dir, opts):
    m = mount_zsfs(opts)
    # text enough to train dictionaries on, the same in both trees
    seed_text = b"".join(p.read_bytes() for p in stdlib_sources(60))
    if "mem_limit" in opts:
        seed_text = seed_text[:600_000]
    # and copies, whose chunks passes share (the random tester makes copies too, but
    # changes most of them before a pass sees them together)
    copied = seed_text[:50_000] + random.Random(7).randbytes(40_000)
    for root in (str(m.path), tmpfs_dir):
        with open(os.path.join(root, "seed-text"), "wb") as f:
            f.write(seed_text)
        for n in range(4):
            with open(os.path.join(root, f"copy-{n}"), "wb") as f:
                f.write(copied)
    plan = fsmodel.plan_for(opts)
    seed = 20261201 + sum(map(ord, opts))
    with Churning(str(m.path), seed) as churn:
        r = fsmodel.run_model(str(m.path), tmpfs_dir, seed=seed, ops=800, procs=3, plan=plan,
                              check_every=200, timeout=300)
    assert not churn.errors, churn.errors[:5]
    assert r.ops == 800 * 3
    # the run did what it is for
    # (a pass waits while writes have chunks staged: under three writers, few finish)
    assert churn.done.get("recompress=all", 0) + churn.done.get("recompress=idle", 0) >= 2, \
        churn.done
    assert r.stats.get("recompressed_chunks", 0) > 0, r.stats
    assert churn.most_shared > 0
    if plan.enospc:
        assert r.counts["enospc"] + r.counts["short_write"] >= 5, dict(r.counts)
    else:       # (under mem_limit, retraining may find no room every time)
        assert churn.done.get("dictionary=retrain", 0) >= 1, churn.done
