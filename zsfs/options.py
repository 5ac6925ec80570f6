"""Mount options, parsed the way mount(8), fstab and mount.fuse3 hand them over.

The option string is the user-facing contract of zsfs: tmpfs syntax for the
capacity and the root directory (``size``, ``nr_inodes``, ``mode``, ``uid``,
``gid``), zram's ``mem_limit`` for the RAM spent on compressed data, a few zsfs
tunables, and the generic mount flags that libfuse understands. All of it is
checked here, before anything is mounted, so that a typo fails with one clear
line instead of a half-made mount.

Conventions:

* ``size=0`` and ``nr_inodes=0`` mean unlimited (as in tmpfs) and are kept as 0;
  ``mem_limit=0`` means no limit (as in zram).
* Numbers are ASCII decimal digits, without sign, exponent, spaces or ``_``,
  and are parsed as integers (no float round trip). Sizes and counts take
  k/m/g/t/p/e suffixes in either case (1024-based, as memparse); ``size`` and
  ``mem_limit`` also take ``N%`` of physical RAM and are rounded up to 4 KiB.
* Every value has a range and anything outside it is an error, never clamped:
  ``size`` and ``mem_limit`` at most ``MAX_BYTES`` after rounding, ``nr_inodes``
  at most ``MAX_COUNT``, ``compact_threshold`` 0..1 (0%..100%) and
  ``compact_interval`` from ``MIN_INTERVAL`` to ``MAX_INTERVAL`` seconds,
  ``recompress_idle`` 0 (off) or ``MIN_INTERVAL`` to ``MAX_IDLE`` seconds, all
  decimals compared exactly (``nan``, ``inf``, ``1e3`` and signs are malformed);
  ``recompress_level`` 1..22; ``dictionary`` ``on`` or ``off``.
* ``uid=`` and ``gid=`` take a number or a name; ``level=0`` is refused, since
  zstd would read it as its default level 3.
* Options that only matter to mount(8) itself (``defaults``, ``noauto``,
  ``nofail``, ``x-*``, ...) are accepted and ignored.
* Flags are passed to libfuse, except ``relatime``, which libfuse 3.14 rejects
  and which is the kernel's default anyway, and zsfs's own ``noxattr``
  (``xattr``, the default, undoes it) and ``writeback`` (``nowriteback``, the
  default, undoes it); ``default_permissions``,
  ``subtype=zsfs`` and ``fsname=`` are always passed.
* ``fsname=`` overrides the mount source; ``subtype=`` is accepted only as
  ``zsfs``, because the subtype is what makes the mount ``fuse.zsfs``.
* Empty items are ignored and a repeated option's last value wins (but every
  occurrence must be valid).
"""

from __future__ import annotations

import grp
import os
import pwd
import re
from decimal import Decimal
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from .arena import physical_memory

_PAGE = 4096
_NO_ID = 2**32 - 1  # (uid_t)-1 means "unchanged" to chown(2), so it owns nothing

_DIGITS = re.compile(r"[0-9]+")
_SCALED = re.compile(r"([0-9]+)([kmgtpe]?)", re.IGNORECASE)
_PERCENT = re.compile(r"([0-9]+)%")
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")
_LEVELS = frozenset(range(-7, 23)) - {0}
_SUFFIX = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50,
           "e": 1 << 60}

#: Largest size= and mem_limit=: the last 4 KiB multiple below 2**63 (off_t's range).
MAX_BYTES = 2**63 - _PAGE
#: Largest nr_inodes=.
MAX_COUNT = 2**63 - 1
#: compact_interval= range, seconds: a day at most (compact_threshold=0 turns
#: background compaction off), and not so short that the check spins.
MIN_INTERVAL = Decimal("0.01")
MAX_INTERVAL = 86400
#: Largest recompress_idle=, seconds: 30 days.
MAX_IDLE = 30 * 86400
#: POSIX ACLs only with -o acl: with them, every create by a caller other than the
#: directory's owner costs two more FUSE round trips (README, "POSIX ACLs").
ACL_DEFAULT = False
# No accepted integer has this many significant digits: longer ones are not converted.
_MAX_DIGITS = len(str(2**64))

# flag -> the group in which the last given flag wins
_FLAGS = {
    "ro": "rw", "rw": "rw",
    "suid": "suid", "nosuid": "suid",
    "dev": "dev", "nodev": "dev",
    "exec": "exec", "noexec": "exec",
    "sync": "sync", "async": "sync",
    "atime": "atime", "noatime": "atime", "relatime": "atime",
    "dirsync": "dirsync",
    "allow_other": "allow", "allow_root": "allow",
    "auto_unmount": "auto_unmount",
    "default_permissions": "default_permissions",
    "xattr": "xattr", "noxattr": "xattr",
    "acl": "acl", "noacl": "acl",
    "writeback": "writeback", "nowriteback": "writeback",
}
_NOT_PASSED = frozenset({"relatime", "default_permissions", "xattr", "noxattr", "acl",
                         "noacl", "writeback", "nowriteback"})
_FOR_MOUNT_ONLY = frozenset(
    {"defaults", "auto", "noauto", "user", "users", "nouser", "owner", "group",
     "_netdev", "nofail", "comment"}
)


class OptionError(ValueError):
    """A mount option is unknown or has a bad value; the message is one line."""


@dataclass(frozen=True)
class MountOptions:
    size: int  # logical capacity in bytes, 0 = unlimited; default half of RAM
    nr_inodes: int  # 0 = unlimited; default RAM / 8 KiB, as tmpfs
    mode: int  # of the root directory; default 0o1777
    uid: int  # owner of the root directory; default the mounter's
    gid: int
    mem_limit: int  # bytes of RAM for compressed data, 0 = no limit (default)
    chunk_size: int  # a power of two, 4 KiB..64 KiB; default 16 KiB
    level: int  # zstd level, -7..-1 or 1..22; default 1
    compact_threshold: float  # fraction 0..1; default 0.95
    compact_interval: float  # seconds, MIN_INTERVAL..MAX_INTERVAL; default 5
    fuse_options: tuple[str, ...]  # for pyfuse3.init
    xattr: bool = True  # extended attributes; noxattr saves a round trip per write(2)
    acl: bool = ACL_DEFAULT  # POSIX ACLs (needs xattr)
    writeback: bool = False  # the kernel's writeback cache: ENOSPC at fsync/close, not write(2)
    recompress_idle: float = 300.0  # seconds a file is left alone before recompression, 0 = off
    recompress_level: int = 6  # zstd level of recompression, 1..22
    dictionary: bool = True  # recompression trains and uses a zstd dictionary


def _round_up(n: int) -> int:
    return -(-n // _PAGE) * _PAGE


def _integer(digits: str) -> int:
    """The value of a string of ASCII digits; past _MAX_DIGITS, 10**_MAX_DIGITS, which
    is above every range (int() of a 5000-digit string is refused anyway)."""
    significant = digits.lstrip("0")
    if len(significant) > _MAX_DIGITS:
        return 10**_MAX_DIGITS
    return int(significant or "0")


def _in_range(n: int, maximum: int) -> int:
    if n > maximum:
        raise ValueError(f"out of range, at most {maximum}")
    return n


def _scaled(value: str) -> int:
    """Digits with an optional k/m/g/t/p/e suffix (powers of 1024)."""
    m = _SCALED.fullmatch(value)
    if not m:
        raise ValueError
    return _integer(m[1]) * _SUFFIX[m[2].lower()]


def _count(value: str) -> int:
    return _in_range(_scaled(value), MAX_COUNT)


def _bytes(value: str) -> int:
    """A byte count: scaled digits or N% of RAM, rounded up to 4 KiB, at most MAX_BYTES."""
    m = _PERCENT.fullmatch(value)
    n = physical_memory() * _integer(m[1]) // 100 if m else _scaled(value)
    return _in_range(_round_up(n), MAX_BYTES)


def _mode(value: str) -> int:
    if not re.fullmatch(r"0*[0-7]{1,4}", value):
        raise ValueError("octal, at most 7777")
    return int(value.lstrip("0") or "0", 8)


def _id(value: str, lookup: Callable[[str], int], what: str) -> int:
    if _DIGITS.fullmatch(value):
        n = _integer(value)
        if n >= _NO_ID:
            raise ValueError("out of range")
        return n
    try:
        return lookup(value)
    except KeyError:
        raise ValueError(f"no such {what}") from None


def _uid(value: str) -> int:
    return _id(value, lambda name: pwd.getpwnam(name).pw_uid, "user")


def _gid(value: str) -> int:
    return _id(value, lambda name: grp.getgrnam(name).gr_gid, "group")


def _chunk_size(value: str) -> int:
    n = _scaled(value)
    if n & (n - 1) or not _PAGE <= n <= 65536:
        raise ValueError("a power of two from 4k to 64k")
    return n


def _level(value: str) -> int:
    negative = value.startswith("-")
    digits = value[negative:]
    n = _integer(digits) if _DIGITS.fullmatch(digits) else 0
    level = -n if negative else n
    if level not in _LEVELS:   # 0 (and -0) included: zstd would read it as level 3
        raise ValueError("-7..-1 or 1..22")
    return level


def _decimal(value: str) -> Decimal:
    """An unsigned decimal without exponent, exactly (no nan, inf, sign or spaces)."""
    if not _DECIMAL.fullmatch(value):
        raise ValueError
    return Decimal(value)


def _fraction(value: str) -> float:
    """0..1, or 0%..100%, compared exactly before it becomes a float."""
    percent = value.endswith("%")
    x = _decimal(value[:-1] if percent else value)
    if not 0 <= x <= (100 if percent else 1):
        raise ValueError("from 0 to 1, or 0% to 100%")
    return float(x.scaleb(-2) if percent else x)


def _seconds(value: str) -> float:
    x = _decimal(value)
    if not MIN_INTERVAL <= x <= MAX_INTERVAL:
        raise ValueError(f"seconds, from {MIN_INTERVAL} to {MAX_INTERVAL}")
    return float(x)


def _idle_seconds(value: str) -> float:
    x = _decimal(value)
    if x and not MIN_INTERVAL <= x <= MAX_IDLE:
        raise ValueError(f"0 (off) or seconds, from {MIN_INTERVAL} to {MAX_IDLE}")
    return float(x)


def _strong_level(value: str) -> int:
    n = _integer(value) if _DIGITS.fullmatch(value) else 0
    if not 1 <= n <= 22:
        raise ValueError("1..22")
    return n


def _on_off(value: str) -> bool:
    if value not in ("on", "off"):
        raise ValueError("on or off")
    return value == "on"


def _fsname(value: str) -> str:
    if not value:
        raise ValueError
    return value


def _subtype(value: str) -> str:
    if value != "zsfs":
        raise ValueError("only zsfs")
    return value


_PARSERS: dict[str, Callable[[str], int | float]] = {
    "size": _bytes,
    "nr_inodes": _count,
    "mode": _mode,
    "uid": _uid,
    "gid": _gid,
    "mem_limit": _bytes,
    "chunk_size": _chunk_size,
    "level": _level,
    "compact_threshold": _fraction,
    "compact_interval": _seconds,
    "recompress_idle": _idle_seconds,
    "recompress_level": _strong_level,
    "dictionary": _on_off,
}
_NAMES: dict[str, Callable[[str], str]] = {"fsname": _fsname, "subtype": _subtype}

_T = TypeVar("_T")


_SHOWN = 40   # longer values are cut short in error messages


def _shown(value: str) -> str:
    if len(value) <= _SHOWN:
        return repr(value)
    return f"{value[:_SHOWN]!r}... ({len(value)} characters)"


def _checked(parse: Callable[[str], _T], name: str, value: str) -> _T:
    try:
        return parse(value)
    except ValueError as e:
        hint = f" ({e})" if str(e) else ""
        raise OptionError(f"bad value for {name}: {_shown(value)}{hint}") from None


def parse_value(name: str, value: str) -> int | float:
    """Parse the value of one MountOptions field, as written after ``name=``.

    The control files take their values (mem_limit, ...) in the same syntax.
    Raises OptionError for an unknown name or a malformed value.
    """
    if name not in _PARSERS:
        raise OptionError(f"unknown option {name!r}")
    return _checked(_PARSERS[name], name, value)


def _items(opts: str | list[str]) -> list[str]:
    chunks = [opts] if isinstance(opts, str) else opts
    return [item for chunk in chunks for item in chunk.split(",") if item]


def parse_options(opts: str | list[str], source: str = "zsfs") -> MountOptions:
    """Parse ``-o`` option strings (one string or several) into MountOptions.

    *source* is the mount's source (fstab's first field), used as the default
    fsname. Raises OptionError for an unknown option or a malformed value.
    """
    ram = physical_memory()
    values: dict[str, Any] = {
        "size": _round_up(ram // 2),
        "nr_inodes": ram // (2 * _PAGE),
        "mode": 0o1777,
        "uid": os.getuid(),
        "gid": os.getgid(),
        "mem_limit": 0,
        "chunk_size": 16384,
        "level": 1,
        "compact_threshold": 0.95,
        "compact_interval": 5.0,
        "recompress_idle": 300.0,
        "recompress_level": 6,
        "dictionary": True,
    }
    names = {"fsname": source or "zsfs", "subtype": "zsfs"}
    flags: dict[str, str] = {}
    for item in _items(opts):
        name, has_value, value = item.partition("=")
        if name in _FOR_MOUNT_ONLY or name.startswith("x-"):
            continue
        if name in _FLAGS:
            if has_value:
                raise OptionError(f"option {name!r} takes no value")
            flags[_FLAGS[name]] = name
            continue
        if name not in _PARSERS and name not in _NAMES:
            raise OptionError(f"unknown option {name!r}")
        if not has_value:
            raise OptionError(f"option {name!r} needs a value")
        if name in _NAMES:
            names[name] = _checked(_NAMES[name], name, value)
        else:
            values[name] = parse_value(name, value)
    if flags.get("acl") == "acl" and flags.get("xattr") == "noxattr":
        raise OptionError("acl needs extended attributes: drop noxattr or acl")
    fuse = ("default_permissions", f"subtype={names['subtype']}", f"fsname={names['fsname']}",
            *(flag for flag in flags.values() if flag not in _NOT_PASSED))
    return MountOptions(**values, fuse_options=fuse, xattr=flags.get("xattr") != "noxattr",
                        acl=flags.get("acl", "acl" if ACL_DEFAULT else "noacl") == "acl",
                        writeback=flags.get("writeback") == "writeback")
