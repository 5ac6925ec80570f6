"""The man pages zsfs(8) and zsfsctl(8): they render without a warning, and they cover
every mount option, every control file, every zsfsctl option and column."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from zsfs import ctl, options

try:
    from conftest import skip_or_fail
except ImportError:  # tests/ imported as a package
    from tests.conftest import skip_or_fail

MAN = Path(__file__).resolve().parent.parent / "man"
PAGES = ["zsfs.8", "zsfsctl.8"]


def rendered(page: str, width: int = 80) -> str:
    if shutil.which("man") is None:
        skip_or_fail("man is not installed (Debian package man-db)")
    env = dict(os.environ, MANWIDTH=str(width), MAN_KEEP_FORMATTING="0", LC_ALL="C.UTF-8")
    r = subprocess.run(["man", "--warnings", "-l", str(MAN / page)], capture_output=True,
                       text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", f"{page}: {r.stderr}"
    return re.sub(r".\x08", "", r.stdout)            # overstrike bold/underline


@pytest.mark.parametrize("page", PAGES)
@pytest.mark.parametrize("width", [60, 80, 132])
def test_renders_without_warnings(page, width):
    text = rendered(page, width)
    assert text.splitlines()[0].startswith(page.split(".")[0].upper() + "(8)")
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS", "EXAMPLES",
                    "SEE ALSO"):
        assert f"\n{section}\n" in text, (page, section)


@pytest.mark.parametrize("page", PAGES)
def test_groff_strict_warnings(page):
    if shutil.which("groff") is None:
        skip_or_fail("groff is not installed (Debian package groff-base)")
    r = subprocess.run(["groff", "-man", "-ww", "-z", str(MAN / page)], capture_output=True,
                       text=True, timeout=60)
    assert (r.returncode, r.stderr) == (0, "")


def _words(text: str) -> str:
    return " " + re.sub(r"\s+", " ", text.replace("\u2010", "-")) + " "


def test_zsfs_page_has_every_mount_option():
    text = _words(rendered("zsfs.8", 200))
    names = [*options._PARSERS, *options._NAMES, *options._FLAGS, *options._FOR_MOUNT_ONLY]
    missing = [n for n in names if not re.search(rf"[\s,(]{re.escape(n)}[\s=,)]", text)]
    assert not missing, f"zsfs(8) does not document: {missing}"


def test_zsfs_page_has_every_control_file(mnt):
    text = _words(rendered("zsfs.8", 200))
    files = sorted(os.listdir(mnt / ".zsfs"))
    assert "stats" in files and "mem_limit" in files
    missing = [f for f in files if f" {f} " not in text and f" {f}," not in text]
    assert not missing, f"zsfs(8) does not document .zsfs/{missing}"
    stats = [ln.split(":")[0] for ln in (mnt / ".zsfs" / "stats").read_text().splitlines()]
    missing = [s for s in stats if not re.search(rf"\b{s}\b", text)]
    assert not missing, f"zsfs(8) does not explain stats lines {missing}"


def test_zsfs_page_has_examples_for_fstab_systemd_and_zram():
    text = rendered("zsfs.8", 200)
    assert "zsfs  /tmp  fuse.zsfs  mode=1777,size=50%" in text
    assert "systemctl enable --now zsfs@" in text and "Type=notify" in text
    assert "zramctl --find" in text and "mount -t fuse.zsfs zsfs /mnt/x" in text
    assert "user_allow_other" in text and "fusermount3" in text


def test_zsfsctl_page_has_every_option_column_and_command():
    text = _words(rendered("zsfsctl.8", 200))
    flags = [s for a in ctl._parser()._actions for s in a.option_strings]
    missing = [f for f in flags if not re.search(rf"[\s,]{re.escape(f)}[\s,]", text)]
    assert not missing, f"zsfsctl(8) does not document {missing}"
    missing = [c for c in ctl.COLUMNS if f" {c} " not in text]
    assert not missing, f"zsfsctl(8) does not document columns {missing}"
    for command in ctl.COMMANDS:
        assert f" {command} " in text
    for key in ctl.SETTABLE:
        assert re.search(rf"\b{key}\b", text), key
