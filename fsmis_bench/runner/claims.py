"""Claims on the jobs of a shared results folder, so that sweeps started side by side never run one job twice.

Two local sweeps into one folder (each under its own ``taskset``, or on two machines sharing a filesystem) plan
their jobs when they start and would otherwise both run every job neither had finished by then. Before a job
starts, its sweep takes ``<results>/claims/<key>.json`` (host, pid and a token of the sweep) under the store's lock; a
job that another live sweep has claimed is skipped, and so is a job that another sweep recorded ``ok`` with the
same fingerprint after this one was planned (with ``--resume``, any job found ``ok`` then; without that check,
two sweeps started without ``--resume`` reran each other's finished jobs once their claims were released). A
claim is released when its job ends; the claim of a sweep that died on this host is taken over. A sweep cannot see whether another host's sweep is still alive: if one died,
delete its claim files (the skip line names them).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from pathlib import Path

from fsmis_bench.runner.store import ResultsStore, write_atomic

CLAIMS_DIR = "claims"


def owner_alive(owner: dict[str, object]) -> bool:
    """Whether the claiming sweep may still run: always for another host, else if its process exists."""
    if owner.get("host") != socket.gethostname():
        return True
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


class JobClaims:
    """Take and release claims on job keys of one results folder."""

    def __init__(self, store: ResultsStore, resume: bool) -> None:
        self.store = store
        self.resume = resume
        self.folder = store.root / CLAIMS_DIR
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "sweep": secrets.token_hex(4)}
        self.planned = store.state()  # what the store held when this sweep planned its jobs

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def acquire(self, key: str, fingerprint: str) -> str | None:
        """Claim ``key`` and return None, or return why this sweep must skip it."""
        with self.store.lock:
            now = self.store.state().get(key)
            if now == ("ok", fingerprint) and (self.resume or now != self.planned.get(key)):
                return "already ok (recorded after this sweep was planned)"
            path = self.path(key)
            try:
                owner = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):  # no claim, or one this code did not write: taken over
                owner = None
            if isinstance(owner, dict) and owner != self.owner and owner_alive(owner):
                return f"claimed by the sweep {owner.get('host')}:{owner.get('pid')} ({path})"
            write_atomic(path, json.dumps(self.owner).encode())
            return None

    def release(self, key: str) -> None:
        """Drop this sweep's claim on ``key`` (not one another sweep has taken over since)."""
        with self.store.lock:
            path = self.path(key)
            try:
                mine = json.loads(path.read_text(encoding="utf-8")) == self.owner
            except (OSError, ValueError):
                return
            if mine:
                path.unlink(missing_ok=True)
