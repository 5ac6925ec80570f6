"""Model-based random testing on a real mount: zsfs against a kernel tmpfs.

Short seeded runs of ``fsmodel.py`` (see its docstring): three processes at once,
each applying its own seeded sequence of namespace and data operations to a zsfs
mount (mounted through the CLI by the ``mount_zsfs`` fixture) and to a fresh tmpfs,
every result, errno and byte compared; then both trees compared whole, and zsfs must
give back all its memory once everything is removed. One run per option set that
changes the data path: default, 4 KiB chunks, 64 KiB chunks at level 3, background
compaction forced (threshold 1.0, 50 ms interval, plus a thread writing 1 to
``.zsfs/compact`` every 30 ms), the kernel's writeback cache (``-o writeback``), and
a ``mem_limit`` small enough that about one write in five gets ENOSPC or a short
count (then the model adopts what zsfs reports written and checks that nothing else
changed).

Long runs over many seeds: ``tools/fsmodel --duration 600``. A failure names its
seed and the command that replays it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest

import fsmodel
from conftest import skip_or_fail

SEED = 20261130
OPS = 2000       # per process
PROCS = 3

OPTION_SETS = [
    pytest.param("", id="default"),
    pytest.param("chunk_size=4k", id="chunk4k"),
    pytest.param("chunk_size=64k,level=3", id="chunk64k-level3"),
    pytest.param("compact_threshold=1.0,compact_interval=0.05", id="compaction-forced"),
    pytest.param("mem_limit=2m", id="mem_limit-enospc"),
    pytest.param("writeback", id="writeback"),
]


@pytest.fixture
def tmpfs_dir():
    """A fresh kernel tmpfs: the model."""
    d = tempfile.mkdtemp(prefix="zsfs-model-tmpfs-")
    try:
        fsmodel.mount_tmpfs(d)
    except RuntimeError as e:
        os.rmdir(d)
        skip_or_fail(str(e))
    try:
        yield d
    finally:
        fsmodel.umount(d)
        try:
            os.rmdir(d)
        except OSError:
            pass


@pytest.mark.slow
@pytest.mark.parametrize("opts", OPTION_SETS)
def test_random_operations_match_tmpfs(mount_zsfs, tmpfs_dir, opts):
    m = mount_zsfs(opts)
    plan = fsmodel.plan_for(opts)
    seed = SEED + sum(map(ord, opts))
    r = fsmodel.run_model(str(m.path), tmpfs_dir, seed=seed, ops=OPS, procs=PROCS, plan=plan,
                          check_every=300, timeout=180)
    assert r.ops == OPS * PROCS
    # the run did what it is for
    assert r.counts["pwrite:ok"] > 100 and r.counts["rename:ok"] > 20
    assert r.counts["unlink:ok"] > 20 and r.counts["open"] > 100
    if plan.enospc:
        failed = r.counts["enospc"] + r.counts["short_write"]
        assert failed >= 20, f"mem_limit did not bite: {dict(r.counts)}"
    if plan.compact_every:
        assert r.compactions >= 20


def test_replay_command_and_option_plans():
    """What a failure prints is a command that runs the same thing."""
    assert fsmodel.replay_command(7, 100, 3, "chunk_size=4k,level=3") == \
        "tools/fsmodel --seed 7 --ops 100 --procs 3 -o chunk_size=4k,level=3"
    assert fsmodel.replay_command(7, 100, 3, "") == "tools/fsmodel --seed 7 --ops 100 --procs 3 -o ''"
    p = fsmodel.plan_for("chunk_size=64k,mem_limit=2m")
    assert (p.chunk_size, p.enospc, p.compact_every) == (65536, True, 0.0)
    p = fsmodel.plan_for("compact_threshold=1.0,compact_interval=0.05")
    assert (p.chunk_size, p.enospc) == (16384, False) and p.compact_every > 0
    assert not fsmodel.plan_for("mem_limit=0").enospc
    assert fsmodel.plan_for("size=4m").enospc
    # data specs are deterministic
    spec = ("mix", 70000, 5)
    assert fsmodel.make_data(spec) == fsmodel.make_data(spec) and len(fsmodel.make_data(spec)) == 70000


def test_tools_fsmodel_replays_a_seed():
    """tools/fsmodel mounts on its own, runs a seed and exits 0 (a tiny run)."""
    tool = os.path.join(os.path.dirname(__file__), "..", "tools", "fsmodel")
    # This interpreter, not the script's #!: the venv's python is not on PATH in CI.
    r = subprocess.run([sys.executable, tool, "--seed", "3", "--ops", "150", "--procs", "2",
                        "-o", "chunk_size=4k"], capture_output=True, text=True, timeout=600)
    if r.returncode and "cannot mount" in r.stdout + r.stderr:
        skip_or_fail("cannot mount a tmpfs or zsfs for tools/fsmodel")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok   seed 3 options 'chunk_size=4k': 300 operations" in r.stdout
