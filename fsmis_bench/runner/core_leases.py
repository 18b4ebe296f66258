"""Leases on CPU cores, so that local sweeps started side by side on one host pin different cores.

A local sweep pins each job to the cores of its slot (local.py). Two sweeps that each asked for ``cpu:1x1`` used
to pin their jobs to the same core 0 and ran at half speed without a word. While a sweep runs it now keeps a lease
``<host-local temp dir>/fsmis_bench_core_leases/<host>-<pid>.json`` (``$FSMIS_BENCH_LEASES`` overrides the
folder; its pid, its spec's name and its cores); a sweep that starts later splits only the cores that no live
lease of this host holds. Where too few are free it takes the free ones first, shares the others, and its log
says with which sweep. With ``cpu:N`` (equal shares) a job's thread count, and so its floats, then depends on the
other sweeps: use ``cpu:NxT`` where numbers must be reproduced. The lease of a sweep that died is ignored and
removed; where the folder cannot be written the sweep runs unleased and says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock

from fsmis_bench.runner.claims import owner_alive
from fsmis_bench.runner.local import Slot, parse_devices
from fsmis_bench.runner.store import write_atomic


def leases_folder() -> Path:
    """``$FSMIS_BENCH_LEASES``, else a folder of the host-local temp dir (not the cache, which a home directory
    shared between hosts, or a per-sweep ``$FSMIS_BENCH_CACHE``, would split or share wrongly)."""
    default = Path(tempfile.gettempdir()) / "fsmis_bench_core_leases"
    return Path(os.environ.get("FSMIS_BENCH_LEASES", default))


def live_leases(folder: Path, mine: Path) -> dict[str, set[int]]:
    """The cores held by the other live sweeps of this host, by a label naming each; dead leases are removed."""
    held: dict[str, set[int]] = {}
    for path in sorted(folder.glob(f"{socket.gethostname()}-*.json")):
        if path == mine:
            continue
        try:
            lease = json.loads(path.read_text(encoding="utf-8"))
            cores = {int(core) for core in lease["cores"]}
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being written, or not ours: neither trusted nor removed
        if owner_alive(lease):
            held[f"sweep {lease.get('sweep')} (pid {lease.get('pid')})"] = cores
        else:
            with contextlib.suppress(OSError):  # another user's stale lease: left
                path.unlink(missing_ok=True)
    return held


@contextmanager
def leased_slots(
    devices: str, sweep: str, folder: Path | None = None
) -> Iterator[tuple[list[Slot], list[str]]]:
    """The slots of ``devices`` on cores no other live sweep holds, leased while the block runs; also yields a
    line for each other sweep whose cores they must share (too few free)."""
    folder = folder or leases_folder()
    mine = folder / f"{socket.gethostname()}-{os.getpid()}.json"
    try:
        folder.mkdir(mode=0o1777, parents=True, exist_ok=True)  # shared by the host's users, like /tmp
        with FileLock(str(folder / ".lock"), mode=0o666):
            held = live_leases(folder, mine)
            slots = parse_devices(devices, taken=set().union(*held.values()))
            cores = {core for slot in slots for core in slot.cpus}
            shared = [
                f"{name} also pins cores {sorted(cores & theirs)}"
                for name, theirs in held.items()
                if cores & theirs
            ]
            lease = {"host": socket.gethostname(), "pid": os.getpid(), "sweep": sweep, "cores": sorted(cores)}
            write_atomic(mine, json.dumps(lease).encode())
    except OSError as exc:
        slots, shared = parse_devices(devices), [f"no core lease ({folder}: {exc.strerror or exc})"]
    try:
        yield slots, shared
    finally:
        with contextlib.suppress(OSError):  # never written where the folder could not be
            mine.unlink(missing_ok=True)
