"""Cache of preprocessed slices, so a second run never re-reads NIfTI or recomputes superpixels.

One ``.npz`` per (scan, preprocessing parameters): the model-resolution image and label stacks, the native
label stack (scoring happens at native resolution), the class-slice index and the intensity statistics of
the native volume. The key hashes the file identities (path, size, mtime) and every parameter that changes
the arrays, so a changed input or parameter never returns stale slices.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fsmis_bench.data.datasets import DatasetSpec
from fsmis_bench.data.superpixels import superpixel_volume
from fsmis_bench.data.volumes import Volume, read_volume, scan_paths

CACHE_VERSION = "1"
#: What reading a truncated, corrupt or foreign entry raises (zip structure, CRC, array header, JSON, pickle).
UNREADABLE_ENTRY = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, pickle.UnpicklingError)

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$FSMIS_BENCH_CACHE`` or ``~/.cache/fsmis_bench``."""
    return Path(os.environ.get("FSMIS_BENCH_CACHE", Path.home() / ".cache" / "fsmis_bench")).expanduser()


@dataclass
class ScanSlices:
    """A scan ready for episodes: model-resolution stacks plus what scoring needs at native resolution."""

    scan_id: int
    image: np.ndarray  # float32 (Z, r, r), un-normalised
    label: np.ndarray  # uint8 (Z, r, r), raw label ids (nearest)
    native_label: np.ndarray  # uint8 (Z, H, W)
    spacing: tuple[float, float, float]  # (sz, sy, sx)
    stats: dict[str, float]  # sum, sumsq, count, min, max of the native image
    class_slices: dict[int, list[int]]  # label id -> slices with >= 1 pixel (native, protocol §1.7)
    class_areas: dict[int, np.ndarray]  # label id -> native pixel count per slice
    superpixels: np.ndarray | None = None  # int32 (Z, r, r)

    @property
    def depth(self) -> int:
        return int(self.image.shape[0])

    @property
    def native_shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.native_label.shape)  # type: ignore[return-value]


def resize_stack(stack: np.ndarray, size: int, kind: str) -> np.ndarray:
    """Resize a (Z, H, W) stack in-plane: ``image`` bilinear with antialiasing, ``label`` nearest."""
    if stack.shape[1:] == (size, size):
        return stack.copy()
    tensor = torch.from_numpy(np.ascontiguousarray(stack))[:, None]
    if kind == "image":
        out = F.interpolate(
            tensor.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        return out[:, 0].numpy().astype(np.float32)
    out = F.interpolate(tensor.float(), size=(size, size), mode="nearest-exact")
    return out[:, 0].numpy().astype(stack.dtype)


def class_index(label: np.ndarray) -> tuple[dict[int, list[int]], dict[int, np.ndarray]]:
    """Per label id: the slices holding >= 1 pixel of it, and its pixel count on every slice."""
    slices, areas = {}, {}
    for value in np.unique(label):
        if value == 0:
            continue
        count = (label == value).sum(axis=(1, 2))
        areas[int(value)] = count.astype(np.int64)
        slices[int(value)] = np.flatnonzero(count).tolist()
    return slices, areas


class SliceCache:
    """Loads scans through the cache; ``cache_dir=None`` disables persistence (everything in memory)."""

    def __init__(self, spec: DatasetSpec, layout_dir: Path, image_size: int, cache_dir: Path | None) -> None:
        self.spec = spec
        self.layout_dir = layout_dir
        self.image_size = image_size
        self.cache_dir = cache_dir

    def _key(self, scan_id: int, with_superpixels: bool, superpixel_compat: bool) -> str:
        files = []
        for path in scan_paths(self.layout_dir, scan_id):
            stat = path.stat()
            files.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
        payload = {
            "version": CACHE_VERSION,
            "dataset": self.spec.name,
            "files": files,
            "crop_256": self.spec.crop_256,
            "image_size": self.image_size,
            "superpixels": with_superpixels,
            "superpixel_compat": superpixel_compat,
            "body_threshold": self.spec.body_threshold,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]

    def _path(self, scan_id: int, with_superpixels: bool, superpixel_compat: bool) -> Path:
        assert self.cache_dir is not None
        key = self._key(scan_id, with_superpixels, superpixel_compat)
        return self.cache_dir / "slices" / f"{self.spec.name}_{scan_id}_{key}.npz"

    def load(
        self, scan_id: int, with_superpixels: bool = False, superpixel_compat: bool = True
    ) -> ScanSlices:
        """The scan's slices, from the cache when present, else computed (and stored)."""
        path = None
        if self.cache_dir is not None:
            path = self._path(scan_id, with_superpixels, superpixel_compat)
            # An entry with superpixels serves a request without them too.
            for candidate in (path, self._path(scan_id, True, superpixel_compat)):
                if not candidate.exists():
                    continue
                try:
                    return self._read(candidate, scan_id)
                except UNREADABLE_ENTRY as exc:  # truncated or damaged on disk: never trusted, rebuilt
                    log.warning(
                        "%s: unreadable slice cache entry (%s: %s); recomputing it",
                        candidate,
                        type(exc).__name__,
                        exc,
                    )
                    # rebuilt below at ``path`` by os.replace; a damaged superpixel entry when next requested
                    break
        volume = read_volume(self.spec, self.layout_dir, scan_id)
        scan = self._compute(volume, with_superpixels, superpixel_compat)
        if path is not None:
            self._write(path, scan)
        return scan

    def _compute(self, volume: Volume, with_superpixels: bool, compat: bool) -> ScanSlices:
        image64 = volume.image.astype(np.float64)
        stats = {
            "sum": float(image64.sum()),
            "sumsq": float((image64**2).sum()),
            "count": float(image64.size),
            "min": float(image64.min()),
            "max": float(image64.max()),
        }
        slices, areas = class_index(volume.label)
        superpixels = None
        if with_superpixels:
            segments, _ = superpixel_volume(volume.image, self.spec.body_threshold, compat=compat)
            superpixels = resize_stack(segments, self.image_size, "label")
        return ScanSlices(
            scan_id=volume.scan_id,
            image=resize_stack(volume.image, self.image_size, "image"),
            label=resize_stack(volume.label, self.image_size, "label"),
            native_label=volume.label,
            spacing=volume.spacing,
            stats=stats,
            class_slices=slices,
            class_areas=areas,
            superpixels=superpixels,
        )

    @staticmethod
    def _write(path: Path, scan: ScanSlices) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {
            "image": scan.image,
            "label": scan.label,
            "native_label": scan.native_label,
            "spacing": np.asarray(scan.spacing),
            "meta": np.asarray(json.dumps({"stats": scan.stats, "class_slices": scan.class_slices})),
        }
        for label_id, area in scan.class_areas.items():
            arrays[f"area_{label_id}"] = area
        if scan.superpixels is not None:
            arrays["superpixels"] = scan.superpixels
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(tmp, path)

    @staticmethod
    def _read(path: Path, scan_id: int) -> ScanSlices:
        with np.load(path) as data:
            meta = json.loads(str(data["meta"]))
            areas = {int(k[5:]): data[k] for k in data.files if k.startswith("area_")}
            return ScanSlices(
                scan_id=scan_id,
                image=data["image"],
                label=data["label"],
                native_label=data["native_label"],
                spacing=tuple(float(s) for s in data["spacing"]),  # type: ignore[arg-type]
                stats=meta["stats"],
                class_slices={int(k): v for k, v in meta["class_slices"].items()},
                class_areas=areas,
                superpixels=data["superpixels"] if "superpixels" in data.files else None,
            )
