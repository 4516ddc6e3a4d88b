"""The stack's processes as Linux shows them in /proc: who listens on a port, whether a
recorded process is still the one that was started (its start time), the members of a
process group, and stopping process groups with a grace period before SIGKILL."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

PROC = Path("/proc")


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (field 3, the state, comes first)."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return raw.rsplit(")", 1)[1].split()


def start_time(pid: int) -> int | None:
    """When the process started (clock ticks since boot); None when there is no such process."""
    fields = _stat(pid)
    return int(fields[19]) if fields and fields[0] != "Z" else None


def cmdline(pid: int) -> list[str]:
    try:
        return [a for a in (PROC / str(pid) / "cmdline").read_bytes().decode(errors="replace").split("\0") if a]
    except OSError:
        return []


def cwd(pid: int) -> Path | None:
    try:
        return Path(os.readlink(PROC / str(pid) / "cwd"))
    except OSError:
        return None


def identity(pid: int) -> dict:
    """What identifies a process later, even after its pid is reused: pid, start time, command."""
    return {"pid": pid, "started": start_time(pid), "cmd": cmdline(pid)}


def alive(record: dict | None) -> bool:
    """The recorded process still runs (same pid and the same start time)."""
    return bool(record) and record.get("started") is not None and start_time(record["pid"]) == record["started"]


def pids() -> list[int]:
    return [int(p.name) for p in PROC.iterdir() if p.name.isdigit()] if PROC.is_dir() else []


def members(pgids) -> dict[int, list[int]]:
    """Live (not zombie) processes of each process group, in one pass over /proc."""
    wanted = set(pgids)
    out: dict[int, list[int]] = {g: [] for g in wanted}
    if not PROC.is_dir():
        for g in wanted:
            try:
                os.killpg(g, 0)
                out[g].append(g)
            except OSError:
                pass
        return out
    for pid in pids():
        fields = _stat(pid)
        if fields and fields[0] != "Z" and int(fields[2]) in wanted:
            out[int(fields[2])].append(pid)
    return out


def group_members(pgid: int) -> list[int]:
    return members([pgid])[pgid]


def listeners(port: int) -> list[int]:
    """Processes holding a listening TCP socket on the port (as far as this user may see)."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{f[9]}]")
    found = []
    for pid in pids() if inodes else []:
        try:
            fds = os.listdir(PROC / str(pid) / "fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(PROC / str(pid) / "fd" / fd) in inodes:
                    found.append(pid)
                    break
            except OSError:
                continue
    return found


def describe(pid: int) -> str:
    cmd = cmdline(pid)
    return f"pid {pid} ({Path(cmd[0]).name if cmd else '?'})"


def signal_groups(pgids: list[int], sig: int) -> None:
    for pgid in pgids:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def wait_groups(pgids: list[int], timeout: float, reap=None) -> list[int]:
    """Wait until the groups have no live member; returns those that still have one."""
    deadline = time.monotonic() + timeout
    while True:
        if reap:
            reap()
        live = members(pgids)
        left = [g for g in pgids if live[g]]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


def stop_groups(pgids: list[int], grace: float, reap=None) -> list[int]:
    """SIGTERM to every group; SIGKILL to the groups that still live after `grace` seconds.
    Returns the groups that had to be killed."""
    signal_groups(pgids, signal.SIGTERM)
    killed = wait_groups(pgids, grace, reap)
    signal_groups(killed, signal.SIGKILL)
    wait_groups(killed, 10, reap)
    return killed
