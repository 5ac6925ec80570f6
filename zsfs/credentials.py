"""Who is asking: the credentials behind a request, for the few permission rules the
kernel leaves to the filesystem.

With ``default_permissions`` the kernel checks modes, owners, the sticky bit and
most of what chmod, chown and utimes may do. What it leaves to zsfs needs to know
more about the caller than a FUSE request says: the request carries the caller's
fsuid, fsgid and thread id, but not its supplementary groups or capabilities. Those
are read from ``/proc/<tid>/status`` (the caller is blocked in its system call, so
they cannot change meanwhile), lazily, and only by the rules that need them, which
are rare: a set-group-ID file touched by someone outside its group, a listing of
``trusted.*`` extended attributes.

If ``/proc`` cannot tell (no /proc, or a caller outside zsfs's pid namespace, whose
thread id arrives as 0), uid 0 stands for every capability and the fsgid for the
only group.
"""

from __future__ import annotations

CAP_FSETID = 4        # keep set-ID bits when writing, truncating or chowning
CAP_SYS_ADMIN = 21    # trusted.* extended attributes


class Caller:
    """The credentials of one request's caller."""

    __slots__ = ("uid", "gid", "pid", "_status")

    def __init__(self, uid: int, gid: int, pid: int) -> None:
        self.uid = uid
        self.gid = gid
        self.pid = pid
        self._status: dict[str, str] | None = None

    @classmethod
    def of(cls, ctx) -> Caller:
        """The caller of a pyfuse3 request (its RequestContext)."""
        return cls(ctx.uid, ctx.gid, ctx.pid)

    def _proc_status(self) -> dict[str, str]:
        if self._status is None:
            self._status = {}
            if self.pid > 0:
                try:
                    with open(f"/proc/{self.pid}/status") as f:
                        for line in f:
                            key, _, value = line.partition(":")
                            self._status[key] = value.strip()
                except OSError:
                    pass
        return self._status

    def capable(self, cap: int) -> bool:
        """Whether the caller has capability *cap* in effect."""
        caps = self._proc_status().get("CapEff")
        if caps is None:
            return self.uid == 0
        return bool(int(caps, 16) >> cap & 1)

    def in_group(self, gid: int) -> bool:
        """Whether *gid* is the caller's fsgid or one of its supplementary groups."""
        if gid == self.gid:
            return True
        return str(gid) in self._proc_status().get("Groups", "").split()

    def in_group_or_capable(self, gid: int) -> bool:
        """The kernel's in_group_or_capable(): may keep a set-group-ID bit for *gid*."""
        return self.in_group(gid) or self.capable(CAP_FSETID)
