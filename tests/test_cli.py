"""The zsfs command's answers to bad input: exit status 2, one line, no mount.

All commands run at once in one fixture, since each spends most of its time
importing; the tests then only look at the answers.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# name -> (arguments, fragments of the error line); {mnt} is an empty directory,
# {file} a regular file, {missing} a path that does not exist
CASES: dict[str, tuple[list[str], list[str]]] = {
    "unknown option": (["{mnt}", "-o", "size=1G,foo"], ["unknown option 'foo'"]),
    "malformed value": (["{mnt}", "-o", "size=abc"], ["bad value for size: 'abc'"]),
    "bad value in a later -o": (["{mnt}", "-o", "size=1G", "-o", "mode=9"], ["mode", "'9'"]),
    "mount helper form": (["zsfs", "{mnt}", "-o", "rw,size=12x,dev,suid"], ["size", "'12x'"]),
    "-o before the positionals": (["-o", "rw,nr_inodes=many", "zsfs", "{mnt}"],
                                  ["nr_inodes", "'many'"]),
    "-o without options": (["{mnt}", "-o"], ["-o"]),
    "unknown flag": (["--bogus", "{mnt}"], ["--bogus"]),
    "no mountpoint": ([], ["MOUNTPOINT"]),
    "no mountpoint, only options": (["-o", "size=1G", "-f"], ["MOUNTPOINT"]),
    "nonexistent mountpoint": (["{missing}", "-o", "size=1G"], ["{missing}", "No such file"]),
    "mountpoint not a directory": (["zsfs", "{file}", "-o", "rw"], ["{file}", "not a directory"]),
    "too many arguments": (["zsfs", "{mnt}", "extra"], ["unexpected argument 'extra'"]),
    "5000-digit interval": (["{mnt}", "-o", "compact_interval=" + "9" * 5000],
                            ["bad value for compact_interval: '99", "(5000 characters)",
                             "(seconds, from 0.01 to 86400)"]),
    "infinite interval": (["{mnt}", "-o", "compact_interval=inf"],
                          ["bad value for compact_interval: 'inf'"]),
    "nan threshold": (["{mnt}", "-o", "compact_threshold=nan"],
                      ["bad value for compact_threshold: 'nan'"]),
    "mem_limit 2**64": (["{mnt}", "-o", "mem_limit=18446744073709551616"],
                        ["bad value for mem_limit: '18446744073709551616' (out of range"]),
    "size past the maximum": (["{mnt}", "-o", "size=8e"], ["bad value for size: '8e'"]),
    "nr_inodes 2**63": (["{mnt}", "-o", "nr_inodes=9223372036854775808"],
                        ["bad value for nr_inodes", "out of range"]),
}


def mounted_paths() -> set[str]:
    with open("/proc/mounts") as f:
        return {line.split()[1] for line in f}


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("cli")
    (base / "mnt").mkdir()
    (base / "file").write_text("x")
    return {"mnt": str(base / "mnt"), "file": str(base / "file"), "missing": str(base / "missing")}


@pytest.fixture(scope="module")
def answers(places) -> dict[str, subprocess.CompletedProcess[str]]:
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "zsfs", *(a.format(**places) for a in args)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for name, (args, _) in CASES.items()
    }
    done = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return done


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_refused(name, answers, places):
    r = answers[name]
    assert r.returncode == 2, r
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("zsfs: error: "), r.stderr
    for fragment in CASES[name][1]:
        assert fragment.format(**places) in lines[0]


def test_nothing_was_mounted(answers, places):
    assert not mounted_paths() & set(places.values())


def test_help():
    r = subprocess.run([sys.executable, "-m", "zsfs", "--help"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0
    assert r.stdout.startswith("usage: zsfs ")
    assert r.stderr == ""
