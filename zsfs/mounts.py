"""The mount table, read from ``/proc/self/mountinfo``.

Reading it sends no request to any FUSE daemon, so it is safe for a mount whose
daemon is stopped, hung or gone: that is how zsfsctl finds zsfs mounts before it
touches any of them. Fields are as proc(5) describes them; space, tab, newline and
backslash in paths are written as ``\\ooo`` and unescaped here.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

ZSFS_TYPE = "fuse.zsfs"
_ESCAPE = re.compile(r"\\([0-7]{3})")


def unescape(field: str) -> str:
    """A mountinfo field with its ``\\ooo`` escapes decoded."""
    return _ESCAPE.sub(lambda m: chr(int(m[1], 8)), field)


@dataclass(frozen=True)
class MountEntry:
    """One line of mountinfo: where, what type, from which source, with which options."""

    mountpoint: str
    fstype: str
    source: str
    device: str              # major:minor
    mount_options: str       # per mount point (rw, nosuid, ...)
    super_options: str       # per filesystem (for FUSE: user_id=, allow_other, ...)

    @property
    def is_zsfs(self) -> bool:
        return self.fstype == ZSFS_TYPE

    def super_option(self, name: str) -> str | None:
        """The value of ``name=value`` among the super options ('' for a flag)."""
        for item in self.super_options.split(","):
            key, eq, value = item.partition("=")
            if key == name:
                return value if eq else ""
        return None


def _parse(line: str) -> MountEntry | None:
    left, sep, right = line.rstrip("\n").partition(" - ")
    lf, rf = left.split(" "), right.split(" ")
    if not sep or len(lf) < 6 or len(rf) < 3:
        return None
    return MountEntry(mountpoint=unescape(lf[4]), fstype=rf[0], source=unescape(rf[1]),
                      device=lf[2], mount_options=lf[5], super_options=rf[2])


def mount_table(path: str = "/proc/self/mountinfo") -> list[MountEntry]:
    """Every mount visible to this process, in mount order."""
    with open(path, errors="surrogateescape") as f:
        return [e for e in map(_parse, f) if e is not None]


def zsfs_mounts(table: list[MountEntry] | None = None) -> list[MountEntry]:
    """The zsfs mounts that are not hidden under a later mount on the same path."""
    table = mount_table() if table is None else table
    top: dict[str, MountEntry] = {}
    for entry in table:
        top[entry.mountpoint] = entry          # a later mount on a path hides earlier ones
    return [e for e in top.values() if e.is_zsfs]


def containing_mount(path: str, table: list[MountEntry]) -> MountEntry | None:
    """The mount that holds the absolute, resolved *path* (the deepest, latest one)."""
    best: MountEntry | None = None
    for entry in table:
        mp = entry.mountpoint
        inside = path == mp or path.startswith(mp if mp.endswith("/") else mp + "/")
        if inside and (best is None or len(mp) >= len(best.mountpoint)):
            best = entry
    return best


def user_id(entry: MountEntry) -> int | None:
    """The uid that mounted a FUSE filesystem (its ``user_id=`` super option)."""
    value = entry.super_option("user_id")
    return int(value) if value and value.isdigit() else None


def may_enter(entry: MountEntry) -> bool:
    """Whether this process may reach into a FUSE mount at all: without
    ``allow_other`` the kernel lets only the mounting user in (root included)."""
    return entry.super_option("allow_other") is not None or user_id(entry) in (None, os.getuid())
