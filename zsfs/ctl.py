"""zsfsctl: see, watch, tune and scrape zsfs mounts, in the manner of util-linux's zramctl.

    zsfsctl [MOUNT...]                  a table of mounts (all zsfs mounts by default)
    zsfsctl stats MOUNT                 every line of .zsfs/stats, sizes made readable
    zsfsctl compact MOUNT               compact now, say what it freed
    zsfsctl set MOUNT KEY=VALUE...      write .zsfs/KEY; each key's error on its own line
    zsfsctl --prometheus                every mount in the Prometheus text format

zramctl's conventions hold: ``--output`` takes a column list (``+LIST`` adds to the
default), ``--bytes`` prints exact numbers instead of ``1.5G``, ``--raw`` drops the
alignment, ``--noheadings`` the header, ``--json`` prints ``{"zsfsctl": [rows]}``.

Everything goes through the mount's ``.zsfs/`` files; nothing is read from the
daemon in any other way. Mounts are found in /proc/self/mountinfo (type
``fuse.zsfs``), which never blocks. Reading a file of a FUSE mount whose daemon is
stopped or hung blocks until the daemon answers, so every read and write runs in a
daemon thread that zsfsctl gives up on after ``--timeout`` seconds: the mount is
then reported as not answering, and a thread still waiting dies with the process.
A mount whose daemon is gone fails at once with ENOTCONN, reported the same way.

Exit status: 0 on success; 1 if any mount could not be read, any key could not be
set or a path is not a zsfs mount; 2 for bad arguments (one line on stderr).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from importlib.metadata import version
from typing import Callable, NoReturn, TypeVar

from .mounts import MountEntry, containing_mount, may_enter, mount_table, user_id, zsfs_mounts

T = TypeVar("T")

CONTROL_DIR = ".zsfs"
DEFAULT_TIMEOUT = 5.0
#: keys ``zsfsctl set`` writes: the writable files of .zsfs/ except ``compact``
SETTABLE = ("mem_limit", "compact_threshold", "compact_interval", "mem_used_max", "requests")
_KEY = re.compile(r"[a-z][a-z0-9_]*")
#: stats lines that are byte counts (made human unless --bytes)
BYTE_STATS = frozenset({
    "orig_data_size", "compr_data_size", "mem_used_total", "mem_limit", "mem_used_max",
    "staged_data_size", "mem_reserved", "chunk_size", "metadata_bytes", "rss_bytes",
})


class CtlError(Exception):
    """A failure to report as ``zsfsctl: message`` (exit status 1)."""


# -- reading and writing the control files, never hanging ---------------------------------


def call_with_timeout(fn: Callable[[], T], timeout: float | None, what: str) -> T:
    """``fn()`` in a daemon thread; CtlError if it has not returned after *timeout*
    seconds (None: wait as long as it takes). OSErrors are re-raised as they are."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:          # handed to the caller's thread
            box["error"] = e

    thread = threading.Thread(target=run, name=f"zsfsctl {what}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise CtlError(f"{what}: not answering after {timeout:g} s "
                       "(is its daemon stopped or hung?)")
    if "error" in box:
        raise box["error"]                   # type: ignore[misc]
    return box["value"]                      # type: ignore[return-value]


def _explain(entry: MountEntry, e: OSError, doing: str) -> CtlError:
    mp = entry.mountpoint
    if e.errno == errno.ENOTCONN:
        return CtlError(f"{mp}: not answering: its daemon is gone (unmount it with "
                        f"'umount -l {mp}' or 'fusermount3 -uz {mp}')")
    if e.errno == errno.EACCES and not may_enter(entry):
        return CtlError(f"{mp}: permission denied: mounted by uid {user_id(entry)} "
                        "without allow_other, so only that user can reach it")
    if e.errno == errno.ENOENT and doing.startswith("read"):
        return CtlError(f"{mp}: no {CONTROL_DIR}/ control files: not a zsfs mount zsfsctl "
                        "knows")
    return CtlError(f"{mp}: {doing}: {e.strerror or e}")


class Mount:
    """One zsfs mount, reached through its control files."""

    def __init__(self, entry: MountEntry, timeout: float) -> None:
        self.entry = entry
        self.timeout = timeout

    @property
    def path(self) -> str:
        return self.entry.mountpoint

    def _control(self, name: str) -> str:
        return os.path.join(self.path, CONTROL_DIR, name)

    def read(self, name: str) -> str:
        """The text of ``.zsfs/<name>``."""
        def read() -> str:
            with open(self._control(name), encoding="ascii", errors="replace") as f:
                return f.read()
        try:
            return call_with_timeout(read, self.timeout, self.path)
        except OSError as e:
            raise _explain(self.entry, e, f"reading {CONTROL_DIR}/{name}") from None

    def write(self, name: str, value: str, timeout: float | None = -1.0) -> None:
        """Write *value* and a newline to ``.zsfs/<name>`` (OSError as it came)."""
        def write() -> None:
            fd = os.open(self._control(name), os.O_WRONLY | os.O_TRUNC)
            try:
                os.write(fd, f"{value}\n".encode("ascii", errors="replace"))
            finally:
                os.close(fd)
        call_with_timeout(write, self.timeout if timeout == -1.0 else timeout, self.path)

    def stats(self) -> dict[str, str]:
        """``.zsfs/stats`` as name -> value text, in the file's order."""
        result = {}
        for line in self.read("stats").splitlines():
            name, sep, value = line.partition(":")
            if sep:
                result[name.strip()] = value.strip()
        if "orig_data_size" not in result:
            raise CtlError(f"{self.path}: {CONTROL_DIR}/stats holds no zsfs statistics")
        return result

    def requests(self) -> dict[str, tuple[int, int]]:
        """``.zsfs/requests`` as opcode -> (count, handler microseconds)."""
        table = {}
        for row in self.read("requests").splitlines()[1:]:
            fields = row.split()
            if len(fields) == 4 and fields[1].isdigit() and fields[2].isdigit():
                table[fields[0]] = (int(fields[1]), int(fields[2]))
        return table


def resolve(path: str, timeout: float, table: list[MountEntry] | None = None) -> Mount:
    """The zsfs mount holding *path* (a mount point or anything inside one)."""
    table = mount_table() if table is None else table
    absolute = os.path.abspath(path)
    for entry in reversed(table):
        if entry.mountpoint == absolute:     # no system call on the mount itself
            if entry.is_zsfs:
                return Mount(entry, timeout)
            break
    try:
        real = call_with_timeout(lambda: os.path.realpath(absolute, strict=True), timeout, path)
    except OSError as e:
        raise CtlError(f"{path}: {e.strerror}") from None
    entry = containing_mount(real, table)
    if entry is None or not entry.is_zsfs:
        where = f" (it is on {entry.mountpoint}, type {entry.fstype})" if entry else ""
        raise CtlError(f"{path}: not a zsfs mount{where}")
    return Mount(entry, timeout)


# -- sizes and columns -----------------------------------------------------------------------


def human_size(n: int) -> str:
    """util-linux's short sizes: 0B, 512B, 4K, 1.5M, 12.3G (powers of 1024)."""
    if n < 1024:
        return f"{n}B"
    value, unit = float(n), "B"
    for unit in "KMGTPE":
        value /= 1024
        if value < 1024:
            break
    text = f"{value:.1f}"
    return (text[:-2] if text.endswith(".0") else text) + unit


@dataclass(frozen=True)
class Column:
    """A column of the mount table: its stats source and how to show it."""

    name: str
    kind: str            # size, count, ratio, percent, text
    help: str
    get: Callable[[MountEntry, dict[str, str]], str]


def _stat(key: str) -> Callable[[MountEntry, dict[str, str]], str]:
    return lambda entry, stats: stats.get(key, "")


def _inodes(entry: MountEntry, stats: dict[str, str]) -> str:
    keys = ("files", "directories", "symlinks", "special_files")
    return str(sum(int(stats.get(k, "0") or 0) for k in keys))


COLUMNS: dict[str, Column] = {c.name: c for c in (
    Column("MOUNTPOINT", "text", "where it is mounted", lambda e, s: e.mountpoint),
    Column("SOURCE", "text", "the mount's source (fsname)", lambda e, s: e.source),
    Column("DATA", "size", "file data held (orig_data_size)", _stat("orig_data_size")),
    Column("COMPR", "size", "that data compressed (compr_data_size)", _stat("compr_data_size")),
    Column("TOTAL", "size", "RAM the allocator holds (mem_used_total)", _stat("mem_used_total")),
    Column("LIMIT", "size", "mem_limit (0 = none)", _stat("mem_limit")),
    Column("MAX-USED", "size", "high-water mark of TOTAL (mem_used_max)", _stat("mem_used_max")),
    Column("STAGED", "size", "written data not yet compressed", _stat("staged_data_size")),
    Column("RATIO", "ratio", "DATA / TOTAL (compression_ratio)", _stat("compression_ratio")),
    Column("FRAG", "percent", "live objects / pages held (frag_ratio)", _stat("frag_ratio")),
    Column("FILES", "count", "regular files", _stat("files")),
    Column("DIRS", "count", "directories", _stat("directories")),
    Column("INODES", "count", "inodes of every type", _inodes),
    Column("CHUNK", "size", "chunk size", _stat("chunk_size")),
    Column("LEVEL", "count", "zstd level", _stat("level")),
    Column("COMPACTED", "count", "pages freed by compaction", _stat("pages_compacted")),
    Column("RSS", "size", "the daemon's resident memory", _stat("rss_bytes")),
)}
DEFAULT_COLUMNS = ("MOUNTPOINT", "DATA", "COMPR", "TOTAL", "LIMIT", "RATIO", "FRAG", "FILES")


def parse_columns(spec: str | None, everything: bool) -> list[str]:
    """``--output`` as column names; ``+LIST`` extends the default list."""
    if everything:
        return list(COLUMNS)
    if not spec:
        return list(DEFAULT_COLUMNS)
    extend = spec.startswith("+")
    names = [n.strip().upper() for n in spec.lstrip("+").split(",")]
    for name in names:
        if name not in COLUMNS:
            raise ValueError(f"unknown column: {name!r} (known: {', '.join(COLUMNS)})")
    return [*DEFAULT_COLUMNS, *names] if extend else names


def cell(column: Column, raw: str, exact: bool) -> str:
    """The text of one cell: sizes human unless *exact*, FRAG with a % unless exact."""
    if column.kind == "size" and raw.isdigit() and not exact:
        return human_size(int(raw))
    if column.kind == "percent" and raw and not exact:
        return f"{raw}%"
    return raw


def json_value(column: Column, raw: str, exact: bool) -> object:
    if column.kind == "text":
        return raw
    if column.kind == "size" and not exact:
        return human_size(int(raw)) if raw.isdigit() else raw
    try:
        return int(raw) if raw.isdigit() else float(raw)
    except ValueError:
        return None


def _raw_escape(text: str) -> str:
    """--raw output: blanks and backslashes as \\xHH, as util-linux writes them."""
    return "".join(f"\\x{ord(c):02x}" if c in " \t\n\\" or not c.isprintable() else c
                   for c in text)


def render_table(rows: list[list[str]], columns: list[Column], headings: bool,
                 raw: bool) -> str:
    table = ([[c.name for c in columns]] if headings else []) + rows
    if raw:
        return "".join(" ".join(_raw_escape(v) for v in row) + "\n" for row in table)
    widths = [max((len(row[i]) for row in table), default=0) for i in range(len(columns))]
    lines = []
    for row in table:
        cells = [v.ljust(w) if c.kind == "text" else v.rjust(w)
                 for v, w, c in zip(row, widths, columns)]
        lines.append(" ".join(cells).rstrip() + "\n")
    return "".join(lines)


# -- commands ---------------------------------------------------------------------------------


class Report:
    """Where a command writes: its output, and error lines that make the status 1."""

    def __init__(self) -> None:
        self.failed = False

    def error(self, message: str) -> None:
        print(f"zsfsctl: {message}", file=sys.stderr, flush=True)
        self.failed = True


def _mounts_for(paths: list[str], timeout: float, report: Report) -> list[Mount]:
    if not paths:
        return [Mount(e, timeout) for e in zsfs_mounts()]
    table = mount_table()
    mounts = []
    for path in paths:
        try:
            mounts.append(resolve(path, timeout, table))
        except CtlError as e:
            report.error(str(e))
    return mounts


def gather(mounts: list[Mount], read: Callable[[Mount], T]) -> list[tuple[Mount, T | CtlError]]:
    """``read(mount)`` for every mount at once, one thread each, so that hung mounts
    cost one --timeout in all, not one each; results in the mounts' order."""
    results: dict[int, T | CtlError] = {}

    def one(i: int, mount: Mount) -> None:
        try:
            results[i] = read(mount)
        except CtlError as e:
            results[i] = e

    threads = [threading.Thread(target=one, args=(i, m), daemon=True)
               for i, m in enumerate(mounts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()                     # each read gives up after its own --timeout
    return [(m, results[i]) for i, m in enumerate(mounts)]


def list_mounts(args: argparse.Namespace, report: Report) -> str:
    columns = [COLUMNS[n] for n in args.columns]
    rows: list[tuple[MountEntry, dict[str, str]]] = []
    for mount, stats in gather(_mounts_for(args.paths, args.timeout, report), Mount.stats):
        if isinstance(stats, CtlError):
            report.error(str(stats))
        else:
            rows.append((mount.entry, stats))
    if args.json:
        items = [{c.name.lower(): json_value(c, c.get(e, s), args.bytes) for c in columns}
                 for e, s in rows]
        return json.dumps({"zsfsctl": items}, indent=2) + "\n"
    cells = [[cell(c, c.get(e, s), args.bytes or args.raw) for c in columns] for e, s in rows]
    return render_table(cells, columns, not args.noheadings, args.raw)


def show_stats(args: argparse.Namespace, report: Report) -> str:
    mount = _one_mount(args)
    stats = mount.stats()
    if args.json:
        values = {k: _number(v) for k, v in stats.items()}
        return json.dumps({"zsfsctl": [{"mountpoint": mount.path, "stats": values}]},
                          indent=2) + "\n"
    lines = [f"{mount.path} ({mount.entry.source}):\n"]
    for name, value in stats.items():
        if name in BYTE_STATS and value.isdigit() and not args.bytes:
            value = human_size(int(value))
        elif name == "frag_ratio" and not args.bytes:
            value += "%"
        lines.append(f"  {name + ':':<26}{value}\n")
    return "".join(lines)


def _number(text: str) -> object:
    try:
        return int(text) if text.isdigit() else float(text)
    except ValueError:
        return text


def _one_mount(args: argparse.Namespace) -> Mount:
    if len(args.paths) != 1:
        raise UsageError(f"{args.command} takes one MOUNT, not {len(args.paths)}")
    return resolve(args.paths[0], args.timeout)


def compact(args: argparse.Namespace, report: Report) -> str:
    mount = _one_mount(args)
    before = mount.stats()                   # within --timeout: the mount answers
    try:
        mount.write("compact", "1", timeout=None)   # as long as compaction takes
    except OSError as e:
        raise _explain(mount.entry, e, "writing .zsfs/compact") from None
    after = mount.stats()
    freed = int(after["pages_compacted"]) - int(before["pages_compacted"])
    size = (lambda n: str(n)) if args.bytes else human_size
    return (f"{mount.path}: compacted {freed} pages; memory "
            f"{size(int(before['mem_used_total']))} -> {size(int(after['mem_used_total']))}, "
            f"frag {before['frag_ratio']}% -> {after['frag_ratio']}%\n")


def _writable(mount: Mount) -> list[str]:
    """The control files this mount lets its owner write (knobs and actions)."""
    def scan() -> list[str]:
        with os.scandir(os.path.join(mount.path, CONTROL_DIR)) as it:
            return sorted(e.name for e in it if e.stat().st_mode & 0o200)
    try:
        return call_with_timeout(scan, mount.timeout, mount.path)
    except OSError as e:
        raise _explain(mount.entry, e, f"reading {CONTROL_DIR}/") from None


def set_keys(args: argparse.Namespace, report: Report) -> str:
    """Write each KEY=VALUE to .zsfs/KEY; a refused one is reported and the rest go on.
    Keys are whatever the mount has writable control files for (SETTABLE today)."""
    if len(args.paths) < 2:
        raise UsageError("set takes a MOUNT and at least one KEY=VALUE")
    pairs = []
    for item in args.paths[1:]:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UsageError(f"set: {item!r} is not KEY=VALUE")
        if not _KEY.fullmatch(key):
            raise UsageError(f"set: {key!r} is not a key (settable: {', '.join(SETTABLE)})")
        pairs.append((key, value))
    mount = resolve(args.paths[0], args.timeout)
    writable = _writable(mount)
    for key, value in pairs:
        if key not in writable:
            report.error(f"{mount.path}: {key}: no such setting (settable: "
                         f"{', '.join(writable)})")
            continue
        try:
            mount.write(key, value)
        except OSError as e:
            if e.errno == errno.EINVAL:
                report.error(f"{mount.path}: {key}={value}: invalid value "
                             "(zsfs(8) gives each key's syntax and range)")
            else:
                report.error(str(_explain(mount.entry, e, f"{key}={value}")))
        except CtlError as e:
            report.error(f"{key}={value}: {e}")
    return ""


# -- Prometheus -------------------------------------------------------------------------------

# stats line -> (metric name, type, help); a value in microseconds is given in seconds
PROMETHEUS: dict[str, tuple[str, str, str]] = {
    "orig_data_size": ("zsfs_orig_data_size_bytes", "gauge", "Logical bytes of file data held in chunks."),
    "compr_data_size": ("zsfs_compr_data_size_bytes", "gauge", "Bytes of live compressed objects."),
    "mem_used_total": ("zsfs_mem_used_total_bytes", "gauge", "Bytes of RAM pages the allocator holds."),
    "mem_limit": ("zsfs_mem_limit_bytes", "gauge", "The allocator's memory limit (0: none)."),
    "mem_used_max": ("zsfs_mem_used_max_bytes", "gauge", "High-water mark of mem_used_total."),
    "staged_data_size": ("zsfs_staged_data_size_bytes", "gauge", "Written bytes not yet compressed."),
    "mem_reserved": ("zsfs_mem_reserved_bytes", "gauge", "Pages reserved for staged chunks, in bytes."),
    "same_chunks": ("zsfs_same_chunks", "gauge", "Chunks stored as a fill word."),
    "huge_chunks": ("zsfs_huge_chunks", "gauge", "Chunks stored uncompressed."),
    "huge_chunks_since": ("zsfs_huge_chunks_since_mount_total", "counter", "Chunks ever stored uncompressed."),
    "pages_compacted": ("zsfs_pages_compacted_total", "counter", "Pages freed by compaction."),
    "freeable_pages": ("zsfs_freeable_pages", "gauge", "Pages compaction could free now."),
    "compactions_background": ("zsfs_compactions_background_total", "counter", "Background compactions run."),
    "compactions_manual": ("zsfs_compactions_manual_total", "counter", "Compactions asked for through .zsfs/compact."),
    "compact_longest_slice_us": ("zsfs_compact_longest_slice_seconds", "gauge", "Longest compaction slice."),
    "frag_ratio": ("zsfs_frag_ratio", "gauge", "Live object bytes per byte of pages held (0..1)."),
    "compression_ratio": ("zsfs_compression_ratio", "gauge", "orig_data_size / mem_used_total."),
    "files": ("zsfs_files", "gauge", "Regular files."),
    "directories": ("zsfs_directories", "gauge", "Directories."),
    "symlinks": ("zsfs_symlinks", "gauge", "Symbolic links."),
    "special_files": ("zsfs_special_files", "gauge", "Devices, FIFOs and sockets."),
    "chunks": ("zsfs_chunks", "gauge", "Chunks held."),
    "chunk_size": ("zsfs_chunk_size_bytes", "gauge", "Bytes per chunk."),
    "level": ("zsfs_zstd_level", "gauge", "zstd compression level."),
    "writeback": ("zsfs_writeback_cache", "gauge", "1 when mounted with -o writeback, else 0."),
    "metadata_bytes": ("zsfs_metadata_bytes", "gauge", "Estimated Python memory of inodes and maps."),
    "rss_bytes": ("zsfs_rss_bytes", "gauge", "The daemon's resident set size."),
}


def _label(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _prometheus_value(key: str, text: str) -> str | None:
    """A stats value in Prometheus's base units: ratios 0..1, seconds."""
    try:
        value = float(text)
    except ValueError:
        return None
    if key == "frag_ratio":
        return f"{value / 100:.6g}"
    if key.endswith("_us"):
        return f"{value / 1e6:.6g}"
    return text


def prometheus(args: argparse.Namespace, report: Report) -> str:
    """Every zsfs mount's stats and request counts; zsfs_up 0 for a mount that does
    not answer (and its error on stderr), so that the output is always whole."""
    samples: dict[str, list[str]] = {}
    meta: dict[str, tuple[str, str]] = {"zsfs_up": ("gauge", "1 if the mount answered.")}

    def add(metric: str, labels: str, value: str) -> None:
        samples.setdefault(metric, []).append(f"{metric}{{{labels}}} {value}")

    mounts = _mounts_for(args.paths, args.timeout, report)
    for mount, read in gather(mounts, lambda m: (m.stats(), m.requests())):
        labels = f'mountpoint="{_label(mount.path)}",fsname="{_label(mount.entry.source)}"'
        if isinstance(read, CtlError):
            print(f"zsfsctl: {read}", file=sys.stderr)
            add("zsfs_up", labels, "0")
            continue
        stats, requests = read
        add("zsfs_up", labels, "1")
        for key, text in stats.items():
            name, kind, help_ = PROMETHEUS.get(key, (f"zsfs_{key}", "gauge", f"stats {key}"))
            value = _prometheus_value(key, text)
            if value is not None:
                meta[name] = (kind, help_)
                add(name, labels, value)
        for opcode, (count, micros) in requests.items():
            op = f'{labels},opcode="{_label(opcode)}"'
            add("zsfs_requests_total", op, str(count))
            add("zsfs_request_handler_seconds_total", op, f"{micros / 1e6:.6g}")
    meta["zsfs_requests_total"] = ("counter", "FUSE requests handled, by opcode.")
    meta["zsfs_request_handler_seconds_total"] = ("counter", "Handler time, by opcode.")
    out = []
    for metric, lines in samples.items():
        kind, help_ = meta[metric]
        out += [f"# HELP {metric} {help_}", f"# TYPE {metric} {kind}", *lines]
    return "".join(line + "\n" for line in out)


# -- command line -----------------------------------------------------------------------------

COMMANDS: dict[str, Callable[[argparse.Namespace, Report], str]] = {
    "list": list_mounts, "stats": show_stats, "compact": compact, "set": set_keys,
}


class UsageError(Exception):
    """Bad arguments: one line and exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0.05 <= value <= 86400:
        raise argparse.ArgumentTypeError(f"{text!r} is outside 0.05..86400 seconds")
    return value


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive count: {text!r}")
    return int(text)


def _parser() -> _Parser:
    p = _Parser(
        prog="zsfsctl",
        usage="%(prog)s [options] [MOUNT...]\n"
              "       %(prog)s stats MOUNT [--watch SECONDS]\n"
              "       %(prog)s compact MOUNT\n"
              "       %(prog)s set MOUNT KEY=VALUE...\n"
              "       %(prog)s --prometheus",
        description="List, watch, tune and scrape zsfs mounts.",
        epilog="Columns: " + ", ".join(f"{c.name} ({c.help})" for c in COLUMNS.values())
               + ". Keys for set: " + ", ".join(SETTABLE) + ".",
    )
    p.add_argument("words", nargs="*", metavar="MOUNT",
                   help="zsfs mounts (a mount point or a path inside one), after a command "
                   "if one is given: stats, compact, set, list (the default)")
    p.add_argument("-o", "--output", metavar="LIST", help="columns to show (+LIST adds)")
    p.add_argument("--output-all", action="store_true", help="show every column")
    p.add_argument("-b", "--bytes", action="store_true", help="exact byte counts")
    p.add_argument("-n", "--noheadings", action="store_true", help="no header line")
    p.add_argument("-r", "--raw", action="store_true", help="no alignment")
    p.add_argument("-J", "--json", action="store_true", help="JSON output")
    p.add_argument("--prometheus", action="store_true",
                   help="Prometheus text format (node_exporter's textfile collector)")
    p.add_argument("-w", "--watch", type=_positive, metavar="SECONDS",
                   help="show again every SECONDS until interrupted")
    p.add_argument("-c", "--count", type=_count, metavar="N", help="with --watch: N times")
    p.add_argument("-t", "--timeout", type=_positive, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help=f"give up on a mount that has not answered (default {DEFAULT_TIMEOUT:g})")
    p.add_argument("-V", "--version", action="version", version=f"%(prog)s {version('zsfs')}")
    return p


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = _parser()
    args = parser.parse_intermixed_args(argv)
    words = args.words
    args.command = words[0] if words and words[0] in COMMANDS else "list"
    args.paths = words[1:] if words and words[0] in COMMANDS else words
    if args.prometheus:
        args.command = "prometheus"
        if words and words[0] in COMMANDS:
            parser.error(f"--prometheus and {words[0]} do not go together")
    if args.json and args.raw:
        parser.error("--json and --raw do not go together")
    if args.count and not args.watch:
        parser.error("--count needs --watch")
    if args.watch and args.command in ("compact", "set"):
        parser.error(f"--watch does not go with {args.command}")
    try:
        args.columns = parse_columns(args.output, args.output_all)
    except ValueError as e:
        parser.error(str(e))
    return args


def _run_once(args: argparse.Namespace) -> tuple[str, bool]:
    report = Report()
    command = prometheus if args.command == "prometheus" else COMMANDS[args.command]
    try:
        out = command(args, report)
    except CtlError as e:
        report.error(str(e))
        out = ""
    return out, report.failed


def _watch(args: argparse.Namespace) -> int:
    tty = sys.stdout.isatty()
    shown, failed = 0, False
    try:
        while True:
            out, failed = _run_once(args)
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            head = f"Every {args.watch:g}s: zsfsctl {' '.join([args.command, *args.paths])}" \
                   f"    {stamp}\n\n"
            sys.stdout.write(("\033[H\033[2J" if tty else ("\n" if shown else "")) + head + out)
            sys.stdout.flush()
            shown += 1
            if args.count and shown >= args.count:
                break
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """Run zsfsctl with *argv* (default: sys.argv[1:]); return the exit status."""
    try:
        args = parse(argv)
        if args.watch:
            return _watch(args)
        out, failed = _run_once(args)
    except UsageError as e:
        print(f"zsfsctl: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 1
    sys.stdout.write(out)
    sys.stdout.flush()
    return 1 if failed else 0


def run() -> None:
    """The console script: exits with main()'s status, quietly on a closed pipe."""
    try:
        status = main()
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        status = 1
    except KeyboardInterrupt:
        status = 130
    # os._exit, not sys.exit: a thread still blocked on a hung mount must not keep
    # the interpreter waiting at shutdown (it is a daemon thread, but be sure).
    os._exit(status)


if __name__ == "__main__":
    run()
