"""Request accounting: how many FUSE requests of each kind reached zsfs's handlers,
and how long the handlers took.

This is what ``MOUNT/.zsfs/requests`` shows, so that a workload's cost can be read
as requests per file times cost per request. It counts what the handlers see:
requests the kernel never sends (cached lookups and attributes) or that pyfuse3
answers itself (INIT, INTERRUPT) are not in it, and the time is the handler's own,
without pyfuse3's and the kernel's share of the round trip.
"""

from __future__ import annotations

from time import perf_counter_ns


class RequestStats:
    """Per-opcode request counts and handler nanoseconds."""

    __slots__ = ("counts", "nanos")

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.nanos: dict[str, int] = {}

    def add(self, opcode: str, started_ns: int) -> None:
        """Count one request of ``opcode`` whose handler began at ``started_ns``."""
        self.nanos[opcode] = self.nanos.get(opcode, 0) + perf_counter_ns() - started_ns
        self.counts[opcode] = self.counts.get(opcode, 0) + 1

    def clear(self) -> None:
        self.counts.clear()
        self.nanos.clear()

    def render(self) -> str:
        """``opcode count total_us mean_us``, a header, then opcodes by count."""
        lines = ["opcode count total_us mean_us\n"]
        for opcode, count in sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0])):
            us = self.nanos[opcode] / 1000
            lines.append(f"{opcode} {count} {us:.0f} {us / count:.1f}\n")
        return "".join(lines)
