"""Unit tests of zsfs.options: the mount option syntax and its defaults."""

from __future__ import annotations

import dataclasses
import grp
import os
import pwd
import subprocess
import sys
import textwrap

import pytest

from zsfs import options
from zsfs.options import MountOptions, OptionError, parse_options, parse_value

GiB = 1 << 30
RAM = 16 * GiB + 12345  # deliberately not a multiple of a page
BASE_FUSE = ("default_permissions", "subtype=zsfs", "fsname=zsfs")
PASSED_FLAGS = ["allow_other", "allow_root", "ro", "rw", "noatime", "atime", "nodev", "dev",
                "nosuid", "suid", "noexec", "exec", "sync", "async", "dirsync", "auto_unmount"]


@pytest.fixture(autouse=True)
def fixed_ram(monkeypatch):
    monkeypatch.setattr(options, "physical_memory", lambda: RAM)


def round_up(n: int) -> int:
    return (n + 4095) // 4096 * 4096


def bad(opts: str, message: str) -> None:
    with pytest.raises(OptionError) as info:
        parse_options(opts)
    assert str(info.value) == message


def test_defaults():
    o = parse_options("")
    assert o == MountOptions(
        size=round_up(RAM // 2), nr_inodes=RAM // 8192, mode=0o1777,
        uid=os.getuid(), gid=os.getgid(), mem_limit=0, chunk_size=16384, level=1,
        compact_threshold=0.95, compact_interval=5.0, fuse_options=BASE_FUSE,
    )


def test_physical_memory_is_the_real_ram(monkeypatch):
    monkeypatch.undo()
    assert options.physical_memory() == os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert parse_options("").size == round_up(options.physical_memory() // 2)


def test_options_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        parse_options("").size = 1  # type: ignore[misc]


def test_option_error_is_a_value_error():
    assert issubclass(OptionError, ValueError)


@pytest.mark.parametrize("value, expected", [
    ("0", 0),
    ("1", 4096),
    ("4096", 4096),
    ("4097", 8192),
    ("1k", 4096), ("1K", 4096), ("6k", 8192),
    ("10m", 10 << 20), ("10M", 10 << 20),
    ("2g", 2 * GiB), ("2G", 2 * GiB),
    ("1t", 1 << 40), ("1T", 1 << 40),
    ("50%", round_up(RAM // 2)),
    ("1%", round_up(RAM // 100)),
    ("0%", 0),
    ("150%", round_up(RAM * 3 // 2)),
])
def test_size(value, expected):
    assert parse_options(f"size={value}").size == expected


@pytest.mark.parametrize("option", ["size", "mem_limit"])
@pytest.mark.parametrize("value", ["abc", "", "1.5G", "-1", "1kb", "1x", "%", "50%%", "1.5%",
                                   "0x10", " 1", "1 k", "1_000", "\u0661"])
def test_malformed_sizes(option, value):
    bad(f"{option}={value}", f"bad value for {option}: {value!r}")


@pytest.mark.parametrize("value, expected", [
    ("0", 0), ("1000", 1000), ("1k", 1024), ("2K", 2048), ("1m", 1 << 20), ("1g", 1 << 30),
])
def test_nr_inodes(value, expected):
    assert parse_options(f"nr_inodes={value}").nr_inodes == expected


@pytest.mark.parametrize("value", ["abc", "10%", "-5", "1.5k", ""])
def test_malformed_nr_inodes(value):
    bad(f"nr_inodes={value}", f"bad value for nr_inodes: {value!r}")


@pytest.mark.parametrize("value, expected", [
    ("1777", 0o1777), ("01777", 0o1777), ("755", 0o755), ("700", 0o700), ("0", 0),
    ("7777", 0o7777),
])
def test_mode(value, expected):
    assert parse_options(f"mode={value}").mode == expected


@pytest.mark.parametrize("value", ["8", "778", "17777", "abc", "rwx", "", "-1", "0o755"])
def test_malformed_mode(value):
    bad(f"mode={value}", f"bad value for mode: {value!r} (octal, at most 7777)")


def test_uid_gid_numeric():
    o = parse_options("uid=1000,gid=2000")
    assert (o.uid, o.gid) == (1000, 2000)


def test_uid_gid_by_name():
    user = pwd.getpwuid(0)
    group = grp.getgrgid(0)
    o = parse_options(f"uid={user.pw_name},gid={group.gr_name}")
    assert (o.uid, o.gid) == (0, 0)
    nobody = pwd.getpwnam("nobody")
    assert parse_options("uid=nobody").uid == nobody.pw_uid


def test_unknown_user_and_group():
    bad("uid=no-such-user-zsfs", "bad value for uid: 'no-such-user-zsfs' (no such user)")
    bad("gid=no-such-group-zsfs", "bad value for gid: 'no-such-group-zsfs' (no such group)")


@pytest.mark.parametrize("option", ["uid", "gid"])
def test_ids_out_of_range(option):
    bad(f"{option}=4294967295", f"bad value for {option}: '4294967295' (out of range)")
    assert getattr(parse_options(f"{option}=4294967294"), option) == 4294967294


@pytest.mark.parametrize("option", ["uid", "gid"])
@pytest.mark.parametrize("value", ["-1", ""])
def test_malformed_ids(option, value):
    with pytest.raises(OptionError, match=f"^bad value for {option}: {value!r}"):
        parse_options(f"{option}={value}")


@pytest.mark.parametrize("value, expected", [
    ("0", 0), ("512M", 512 << 20), ("1g", GiB), ("100000", round_up(100000)),
    ("25%", round_up(RAM // 4)),
])
def test_mem_limit(value, expected):
    assert parse_options(f"mem_limit={value}").mem_limit == expected


@pytest.mark.parametrize("value, expected", [
    ("4096", 4096), ("4k", 4096), ("8192", 8192), ("16k", 16384), ("32K", 32768),
    ("64k", 65536), ("65536", 65536),
])
def test_chunk_size(value, expected):
    assert parse_options(f"chunk_size={value}").chunk_size == expected


@pytest.mark.parametrize("value", ["0", "2048", "3000", "12k", "131072", "128k", "1m"])
def test_chunk_size_out_of_range(value):
    bad(f"chunk_size={value}",
        f"bad value for chunk_size: {value!r} (a power of two from 4k to 64k)")


@pytest.mark.parametrize("value", ["abc", "", "16kb", "4.0k"])
def test_malformed_chunk_size(value):
    bad(f"chunk_size={value}", f"bad value for chunk_size: {value!r}")


@pytest.mark.parametrize("value", [-7, -3, -1, 1, 3, 19, 22])
def test_level(value):
    assert parse_options(f"level={value}").level == value


@pytest.mark.parametrize("value", ["0", "-0", "-8", "23", "100", "fast", "1.5", "+3", ""])
def test_bad_level(value):
    bad(f"level={value}", f"bad value for level: {value!r} (-7..-1 or 1..22)")


@pytest.mark.parametrize("value, expected", [
    ("0.9", 0.9), ("90%", 0.9), ("0", 0.0), ("1", 1.0), ("100%", 1.0), ("0%", 0.0),
    (".5", 0.5), ("1.", 1.0), ("12.5%", 0.125),
])
def test_compact_threshold(value, expected):
    assert parse_options(f"compact_threshold={value}").compact_threshold == pytest.approx(expected)


@pytest.mark.parametrize("value", ["1.5", "101%", "2"])
def test_compact_threshold_out_of_range(value):
    bad(f"compact_threshold={value}",
        f"bad value for compact_threshold: {value!r} (from 0 to 1, or 0% to 100%)")


@pytest.mark.parametrize("value", ["-0.1", "abc", "nan", "inf", "%", "90%%", "", "1e-1"])
def test_malformed_compact_threshold(value):
    with pytest.raises(OptionError, match="^bad value for compact_threshold: "):
        parse_options([f"compact_threshold={value}"])


@pytest.mark.parametrize("value, expected", [
    ("5", 5.0), ("0.5", 0.5), ("10.25", 10.25), (".1", 0.1),
])
def test_compact_interval(value, expected):
    assert parse_options(f"compact_interval={value}").compact_interval == expected


@pytest.mark.parametrize("value", ["0", "0.0", "-1", "abc", "inf", "nan", "1s", ""])
def test_bad_compact_interval(value):
    with pytest.raises(OptionError, match="^bad value for compact_interval: "):
        parse_options(f"compact_interval={value}")


@pytest.mark.parametrize("flag", PASSED_FLAGS)
def test_fuse_flags_pass_through(flag):
    assert parse_options(flag).fuse_options == (*BASE_FUSE, flag)


def test_flags_keep_their_order():
    o = parse_options("allow_other,noexec,size=1G,nosuid")
    assert o.fuse_options == (*BASE_FUSE, "allow_other", "noexec", "nosuid")


def test_relatime_is_the_default_and_not_passed():
    assert parse_options("relatime").fuse_options == BASE_FUSE
    assert parse_options("noatime,relatime").fuse_options == BASE_FUSE


def test_default_permissions_is_idempotent():
    assert parse_options("default_permissions,default_permissions").fuse_options == BASE_FUSE


@pytest.mark.parametrize("opts, winner", [
    ("ro,rw", "rw"), ("rw,ro", "ro"),
    ("nosuid,suid", "suid"), ("dev,nodev", "nodev"),
    ("noexec,exec", "exec"), ("sync,async", "async"),
    ("atime,noatime", "noatime"), ("relatime,atime", "atime"),
    ("allow_other,allow_root", "allow_root"), ("allow_root,allow_other", "allow_other"),
])
def test_last_flag_wins(opts, winner):
    assert parse_options(opts).fuse_options == (*BASE_FUSE, winner)


def test_mount_wrapper_flags():
    # what mount.fuse3 hands over for `mount -t fuse.zsfs zsfs MNT -o size=1G`
    o = parse_options("rw,size=1G,dev,suid")
    assert o.size == GiB
    assert o.fuse_options == (*BASE_FUSE, "rw", "dev", "suid")


def test_source_is_the_fsname():
    assert parse_options("", source="ram").fuse_options[2] == "fsname=ram"
    assert parse_options("", source="").fuse_options[2] == "fsname=zsfs"


def test_fsname_overrides_source():
    assert parse_options("fsname=scratch", source="ram").fuse_options == (
        "default_permissions", "subtype=zsfs", "fsname=scratch")


def test_subtype():
    assert parse_options("subtype=zsfs").fuse_options == BASE_FUSE
    bad("subtype=tmpfs", "bad value for subtype: 'tmpfs' (only zsfs)")


def test_empty_fsname():
    bad("fsname=", "bad value for fsname: ''")


@pytest.mark.parametrize("item", [
    "defaults", "auto", "noauto", "user", "users", "nouser", "owner", "group", "_netdev",
    "nofail", "comment=systemd.automount", "x-systemd.automount", "x-systemd.device-timeout=10s",
    "x-gvfs-show",
])
def test_options_for_mount_only_are_ignored(item):
    assert parse_options(item) == parse_options("")


@pytest.mark.parametrize("name", ["foo", "Size", "strictatime", "nr_blocks", "huge", "debug",
                                  "max_read", "-o"])
def test_unknown_options(name):
    bad(name, f"unknown option {name!r}")
    bad(f"size=1G,{name}=1", f"unknown option {name!r}")


def test_option_without_a_name():
    bad("=1G", "unknown option ''")


def test_flag_with_a_value():
    bad("ro=1", "option 'ro' takes no value")
    bad("allow_other=", "option 'allow_other' takes no value")


@pytest.mark.parametrize("name", ["size", "mode", "uid", "level", "fsname", "subtype"])
def test_option_without_a_value(name):
    bad(name, f"option {name!r} needs a value")


def test_empty_items_are_ignored():
    assert parse_options(",,size=1G,,mode=700,") == parse_options("size=1G,mode=700")
    assert parse_options([]) == parse_options(",") == parse_options("")


def test_several_option_strings():
    o = parse_options(["size=1G,mode=700", "uid=1", "", "ro"])
    assert (o.size, o.mode, o.uid) == (GiB, 0o700, 1)
    assert o.fuse_options == (*BASE_FUSE, "ro")


def test_last_value_wins():
    o = parse_options(["size=1G,level=5", "size=2G", "level=7"])
    assert (o.size, o.level) == (2 * GiB, 7)


def test_every_occurrence_is_checked():
    bad("size=abc,size=1G", "bad value for size: 'abc'")


def test_values_containing_equals_signs():
    bad("size=1=2", "bad value for size: '1=2'")
    assert parse_options("fsname=a=b").fuse_options[2] == "fsname=a=b"


@pytest.mark.parametrize("name, value, expected", [
    ("mem_limit", "512M", 512 << 20), ("mem_limit", "0", 0), ("compact_threshold", "75%", 0.75),
    ("compact_interval", "2.5", 2.5), ("size", "1g", GiB), ("level", "-3", -3),
])
def test_parse_value(name, value, expected):
    assert parse_value(name, value) == expected


def test_parse_value_errors():
    with pytest.raises(OptionError, match=r"^bad value for mem_limit: '1x'$"):
        parse_value("mem_limit", "1x")
    with pytest.raises(OptionError, match=r"^unknown option 'fsname'$"):
        parse_value("fsname", "x")
    with pytest.raises(OptionError, match=r"^unknown option 'ro'$"):
        parse_value("ro", "")


def test_error_messages_are_one_line():
    with pytest.raises(OptionError) as info:
        parse_options("size=1\nG")
    assert "\n" not in str(info.value)
    with pytest.raises(OptionError) as info:
        parse_options("fo\no")
    assert "\n" not in str(info.value)


@pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")
def test_libfuse_accepts_every_passed_option(tmp_path):
    """Each flag handed to pyfuse3.init must be one libfuse knows (it rejects the rest)."""
    script = textwrap.dedent("""
        import sys, pyfuse3
        from zsfs.options import parse_options
        mnt, flags = sys.argv[1], sys.argv[2:]
        for flag in flags:
            try:
                pyfuse3.init(pyfuse3.Operations(), mnt, list(parse_options(flag).fuse_options))
            except RuntimeError:
                print(flag)
            else:
                pyfuse3.close(unmount=True)
    """)
    flags = PASSED_FLAGS + ["relatime", "default_permissions", "fsname=x"]
    r = subprocess.run([sys.executable, "-c", script, str(tmp_path), *flags],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [], r.stderr


# --------------------------------------------------------------------------
# numbers: integers parsed as integers, ranges, edges (shared with .zsfs/)
# --------------------------------------------------------------------------

HUGE = "9" * 5000
MAX_BYTES = 2**63 - 4096
EDGE_JUNK = ["inf", "nan", "-0", "+0", "+1", "1e3", "", " ", " 1", "1 ", "1\n", "\n", "-1",
             "0x10", "1_0", "\u0661", "1\x00"]


def test_documented_maxima():
    assert options.MAX_BYTES == MAX_BYTES == 9223372036854771712
    assert options.MAX_COUNT == 2**63 - 1
    assert options.MIN_INTERVAL == options.Decimal("0.01")
    assert options.MAX_INTERVAL == 86400


def rejected(name: str, value: str) -> str:
    """The error message for name=value, which must be refused by parse_options and
    parse_value (the control files' parser) alike, as one short line."""
    with pytest.raises(OptionError) as info:
        parse_options([f"{name}={value}"])
    message = str(info.value)
    assert message.startswith(f"bad value for {name}: "), message
    assert "\n" not in message and len(message) < 200, message
    with pytest.raises(OptionError) as again:
        parse_value(name, value)
    assert str(again.value) == message
    return message


@pytest.mark.parametrize("option", ["size", "mem_limit"])
@pytest.mark.parametrize("value, expected", [
    (str(MAX_BYTES), MAX_BYTES),
    (str(MAX_BYTES - 4095), MAX_BYTES),           # rounds up to the maximum
    ("7e", 7 << 60), ("7E", 7 << 60),
    ("8191p", 8191 << 50), ("8388607t", 8388607 << 40), ("8388607G", 8388607 << 30),
    ("1G", 1073741824), ("1g", 1073741824), ("1K", 4096), ("1M", 1 << 20), ("1T", 1 << 40),
    ("1p", 1 << 50), ("1e", 1 << 60),
    ("0k", 0), ("0e", 0), ("000000000001G", GiB), ("0" * 5000, 0), ("0" * 5000 + "1k", 4096),
    ("99999999999999999", round_up(99999999999999999)),   # no float round trip
    ("9007199254740993", round_up(9007199254740993)),     # 2**53 + 1
])
def test_byte_sizes_are_exact_integers(option, value, expected):
    got = parse_value(option, value)
    assert type(got) is int and got == expected
    assert getattr(parse_options(f"{option}={value}"), option) == expected


@pytest.mark.parametrize("option", ["size", "mem_limit"])
@pytest.mark.parametrize("value", [
    str(MAX_BYTES + 1),                       # would round up to 2**63
    str(2**63 - 1), str(2**63), str(2**64 - 1), str(2**64), str(2**64 + 1),
    "99999999999999999999999999", "18446744073709551616", HUGE, HUGE + "k",
    "8e", "8E", "8192p", "8388608t", "8388608T", "16e", "9999999999999999999e",
    "100000000000000000000%", "100000000000%", HUGE + "%",
])
def test_byte_sizes_out_of_range(option, value):
    assert rejected(option, value).endswith(f" (out of range, at most {MAX_BYTES})")


@pytest.mark.parametrize("option", ["size", "mem_limit"])
@pytest.mark.parametrize("value", EDGE_JUNK + ["1.0", "k", "G", "1kk", "1KiB", "1GB", "1z", "1b",
                                               "1 G", "1G\n", "%", "-1%", "1e-3", "1E3"])
def test_byte_sizes_malformed(option, value):
    assert rejected(option, value) == f"bad value for {option}: {value!r}"


def test_huge_values_are_cut_short_in_messages():
    message = rejected("mem_limit", HUGE)
    assert message == (f"bad value for mem_limit: {'9' * 40!r}... (5000 characters) "
                       f"(out of range, at most {MAX_BYTES})")
    message = rejected("compact_interval", HUGE)
    assert "(5000 characters)" in message and message.endswith("(seconds, from 0.01 to 86400)")


@pytest.mark.parametrize("value, expected", [
    (str(2**63 - 1), 2**63 - 1), ("7e", 7 << 60), ("8191p", 8191 << 50), ("0", 0),
    ("1G", GiB), ("1e", 1 << 60),
])
def test_nr_inodes_range(value, expected):
    got = parse_value("nr_inodes", value)
    assert type(got) is int and got == expected


@pytest.mark.parametrize("value", [str(2**63), str(2**64 - 1), str(2**64), HUGE, "8e", "8192p"])
def test_nr_inodes_out_of_range(value):
    assert rejected("nr_inodes", value).endswith(f" (out of range, at most {2**63 - 1})")


@pytest.mark.parametrize("value", EDGE_JUNK + ["1.0", "1k5", "10%"])
def test_nr_inodes_malformed(value):
    assert rejected("nr_inodes", value) == f"bad value for nr_inodes: {value!r}"


@pytest.mark.parametrize("option", ["uid", "gid"])
@pytest.mark.parametrize("value", [str(2**32), str(2**64), HUGE, "0" * 30 + "4294967295"])
def test_huge_ids(option, value):
    assert rejected(option, value).endswith(" (out of range)")


@pytest.mark.parametrize("value", [HUGE, "-" + HUGE, str(2**64), "-" + str(2**64), "-", "--1",
                                   "inf", "nan", "1e1", " 1", "1\n", "+1"])
def test_huge_or_odd_levels(value):
    assert rejected("level", value).endswith(" (-7..-1 or 1..22)")


def test_levels_with_leading_zeros():
    assert parse_value("level", "007") == 7
    assert parse_value("level", "-07") == -7
    assert parse_value("level", "0" * 5000 + "3") == 3


@pytest.mark.parametrize("value", [HUGE, str(2**64), "1e", "64p", HUGE + "k"])
def test_huge_chunk_sizes(value):
    assert rejected("chunk_size", value).endswith(" (a power of two from 4k to 64k)")


@pytest.mark.parametrize("value", [HUGE, "0" * 5000 + "8"])
def test_huge_modes(value):
    assert rejected("mode", value).endswith(" (octal, at most 7777)")


def test_mode_with_many_leading_zeros():
    assert parse_value("mode", "0" * 5000 + "755") == 0o755


@pytest.mark.parametrize("value, expected", [
    ("1", 1.0), ("1.000000000000000000000000000000", 1.0), ("100%", 1.0), ("100.000%", 1.0),
    ("0", 0.0), ("0.0", 0.0), ("0%", 0.0), ("00.5", 0.5), ("0." + "0" * 5000 + "1", 0.0),
    ("0.99999999999999999999999", 1.0), ("99.5%", 0.995), ("33.3%", 0.333),
])
def test_compact_threshold_edges(value, expected):
    got = parse_value("compact_threshold", value)
    assert type(got) is float and got == expected


@pytest.mark.parametrize("value", [
    "1.0000000000000000000001", "100.0000000000000000001%", "1.0000000000000001",
    "100.00000000000001%", HUGE, HUGE + "%", str(2**64), str(2**64 - 1), "2",
])
def test_compact_threshold_beyond_one(value):
    assert rejected("compact_threshold", value).endswith(" (from 0 to 1, or 0% to 100%)")


@pytest.mark.parametrize("value", EDGE_JUNK + [
    "-0.0", "+0.5", "-0%", "Infinity", "-inf", "NaN", "sNaN", "5e-1", "50%%", "%", ".", "..5",
    "1/2", "0.5 %",
])
def test_compact_threshold_malformed(value):
    assert rejected("compact_threshold", value) == f"bad value for compact_threshold: {value!r}"


@pytest.mark.parametrize("value, expected", [
    ("86400", 86400.0), ("86400.000", 86400.0), ("0.01", 0.01), ("0.010", 0.01), (".01", 0.01),
    ("1.", 1.0), ("0" * 5000 + "5", 5.0), ("86399.99999999999999999999", 86400.0),
])
def test_compact_interval_edges(value, expected):
    got = parse_value("compact_interval", value)
    assert type(got) is float and got == expected


@pytest.mark.parametrize("value", [
    "86401", "86400.000000000000000001", "86400.0000000001", "0.00999999999999999999",
    "0.009", "0.001", "0", "0.0", ".0", HUGE, "1" + "0" * 400, str(2**64), str(2**64 - 1),
])
def test_compact_interval_out_of_range(value):
    assert rejected("compact_interval", value).endswith(" (seconds, from 0.01 to 86400)")


@pytest.mark.parametrize("value", EDGE_JUNK + [
    "-0.0", "+5", "Infinity", "-inf", "NaN", "1e3", "1E3", "5s", "1m", "5%", ".", "1:00",
])
def test_compact_interval_malformed(value):
    assert rejected("compact_interval", value) == f"bad value for compact_interval: {value!r}"
