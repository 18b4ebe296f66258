"""Smooth random implicit shapes on a voxel grid: the geometric building blocks of the synthetic phantoms.

Everything is defined in physical millimetres, so one sampled patient renders to the same anatomy at any
resolution; only the voxel grid changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

Box = tuple[slice, slice, slice]


@dataclass(frozen=True)
class Grid:
    """Voxel-centre coordinates (mm) along the array axes (z, y, x), all increasing with the index.

    z points to the head, y to the patient's front (anterior), x to the patient's left.
    """

    z: np.ndarray
    y: np.ndarray
    x: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.z), len(self.y), len(self.x))

    def window(self, lo: np.ndarray, hi: np.ndarray) -> Box | None:
        """Index box of the voxels whose centres lie within [lo, hi] (mm, per axis); None when empty."""
        box = []
        for coords, a, b in zip((self.z, self.y, self.x), lo, hi):
            start, stop = np.searchsorted(coords, a, "left"), np.searchsorted(coords, b, "right")
            if stop <= start:
                return None
            box.append(slice(int(start), int(stop)))
        return (box[0], box[1], box[2])

    def sub(self, box: Box) -> Grid:
        return Grid(self.z[box[0]], self.y[box[1]], self.x[box[2]])

    def mesh(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable float32 (z, y, x) coordinate arrays of shapes (Z,1,1), (1,H,1), (1,1,W)."""
        return (
            self.z.astype(np.float32)[:, None, None],
            self.y.astype(np.float32)[None, :, None],
            self.x.astype(np.float32)[None, None, :],
        )


@dataclass(frozen=True)
class FourierField:
    """Smooth random field of unit variance: a sum of plane waves with random directions and phases.

    Evaluated separably (outer products of 1-D complex exponentials), so it costs a few array operations
    per wave on the whole grid.
    """

    wavevectors: np.ndarray  # (n, 3) rad/mm along (z, y, x)
    phases: np.ndarray  # (n,)

    @classmethod
    def sample(
        cls, rng: np.random.Generator, n_waves: int, wavelength_mm: tuple[float, float], z_scale: float = 1.0
    ) -> FourierField:
        """Random waves; ``z_scale`` < 1 slows the variation along z (0 gives a field constant along z)."""
        directions = rng.normal(size=(n_waves, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        lengths = np.exp(rng.uniform(np.log(wavelength_mm[0]), np.log(wavelength_mm[1]), size=(n_waves, 1)))
        wavevectors = 2 * np.pi * directions / lengths
        wavevectors[:, 0] *= z_scale
        return cls(wavevectors, rng.uniform(0, 2 * np.pi, size=n_waves))

    def __call__(self, grid: Grid) -> np.ndarray:
        out = np.zeros(grid.shape, np.float32)
        for (kz, ky, kx), phase in zip(self.wavevectors, self.phases):
            zy = (np.exp(1j * (kz * grid.z + phase))[:, None] * np.exp(1j * ky * grid.y)[None, :]).astype(
                np.complex64
            )
            out += zy.real[:, :, None] * np.cos(kx * grid.x).astype(np.float32)
            out -= zy.imag[:, :, None] * np.sin(kx * grid.x).astype(np.float32)
        return out * np.float32(np.sqrt(2.0 / len(self.phases)))

    @property
    def bound(self) -> float:
        """Upper bound of the field's absolute value."""
        return float(np.sqrt(2.0 * len(self.phases)))


@dataclass(frozen=True)
class NoiseField:
    """Smooth random field of about unit variance: Gaussian-smoothed white noise on a lattice.

    The lattice lives in millimetres, so the field does not depend on the grid it is evaluated on; values
    between lattice nodes are interpolated linearly, one axis at a time (a few gathers per voxel). The
    correlation length along z is 1.5 times the in-plane one (thick slices, tube-like structures).
    """

    origin: np.ndarray  # (3,) mm, position of lattice node (0, 0, 0)
    steps: np.ndarray  # (3,) lattice spacing, mm
    values: np.ndarray  # (nz, ny, nx) float32

    @classmethod
    def sample(cls, rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray, sigma_mm: float) -> NoiseField:
        """Field with in-plane correlation length ``sigma_mm`` covering the box [lo, hi] (mm, (z, y, x))."""
        steps = np.array([1.5, 1.0, 1.0]) * sigma_mm / 1.2
        origin = np.asarray(lo, float) - 2 * steps
        counts = np.ceil((np.asarray(hi, float) + 2 * steps - origin) / steps).astype(int) + 1
        noise = ndimage.gaussian_filter(
            rng.standard_normal(tuple(counts), dtype=np.float32), 1.2, truncate=3.0
        )
        return cls(origin, steps, noise / noise.std())

    def __call__(self, grid: Grid) -> np.ndarray:
        v = self.values
        for axis, coords in ((0, grid.z), (2, grid.x), (1, grid.y)):  # z first keeps intermediates small
            pos = np.clip((coords - self.origin[axis]) / self.steps[axis], 0, v.shape[axis] - 1.001)
            first = pos.astype(int)
            shape = [1, 1, 1]
            shape[axis] = -1
            w = (pos - first).astype(np.float32).reshape(shape)
            low = np.take(v, first, axis=axis)
            v = low + (np.take(v, first + 1, axis=axis) - low) * w
        return v


def rotation(about_z: float = 0.0, about_y: float = 0.0, about_x: float = 0.0) -> np.ndarray:
    """Rotation matrix in (z, y, x) coordinates from angles in degrees (axial, coronal, sagittal plane)."""
    mats = []
    for angle, (i, j) in ((about_z, (1, 2)), (about_y, (0, 2)), (about_x, (0, 1))):
        c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
        m = np.eye(3)
        m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
        mats.append(m)
    return mats[0] @ mats[1] @ mats[2]


@dataclass(frozen=True)
class Ellipsoid:
    """Ellipsoid with semi-axes ``axes`` along the columns of ``rotation`` (mm, (z, y, x) order)."""

    center: np.ndarray
    axes: np.ndarray
    rotation: np.ndarray

    @classmethod
    def make(
        cls,
        center: tuple[float, float, float],
        axes: tuple[float, float, float],
        rot: np.ndarray | None = None,
    ) -> Ellipsoid:
        return cls(np.asarray(center, float), np.asarray(axes, float), np.eye(3) if rot is None else rot)

    def half_extent(self) -> np.ndarray:
        """Half-size of the axis-aligned bounding box."""
        return np.sqrt(((self.rotation * self.axes[None, :]) ** 2).sum(axis=1))

    def scaled(self, factor: float, offset_mm: float = 0.0) -> Ellipsoid:
        """Same centre and orientation, semi-axes multiplied by ``factor`` plus ``offset_mm``."""
        return Ellipsoid(self.center, self.axes * factor + offset_mm, self.rotation)

    def point(self, local: tuple[float, float, float]) -> np.ndarray:
        """World position of a point given in units of the semi-axes in the ellipsoid's own frame."""
        return self.center + self.rotation @ (np.asarray(local) * self.axes)

    def radius(self, pz: np.ndarray, py: np.ndarray, px: np.ndarray) -> np.ndarray:
        """Normalised radius (< 1 inside, 1 on the surface) at broadcastable world coordinates."""
        dz, dy, dx = (p - np.float32(c) for p, c in zip((pz, py, px), self.center))
        total = None
        for j in range(3):
            r = (self.rotation[:, j] / self.axes[j]).astype(np.float32)
            term = np.square(r[0] * dz + r[1] * dy + r[2] * dx)
            total = term if total is None else total + term
        return np.sqrt(total)


@dataclass(frozen=True)
class Shape:
    """Smooth union of ellipsoids minus ``holes``, warped by a smooth random displacement field.

    ``level`` is < 1 inside; it behaves like a normalised radius, so ``level < 1 - t`` erodes the shape.
    """

    parts: tuple[Ellipsoid, ...]
    holes: tuple[Ellipsoid, ...] = ()
    warp: tuple[FourierField, FourierField, FourierField] | None = None
    warp_mm: float = 0.0
    blend: float = 0.12

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        lo = np.min([p.center - p.half_extent() for p in self.parts], axis=0)
        hi = np.max([p.center + p.half_extent() for p in self.parts], axis=0)
        margin = self.warp_mm * max((f.bound for f in self.warp), default=0.0) if self.warp else 0.0
        return lo - margin, hi + margin

    def level(self, grid: Grid) -> tuple[Box, np.ndarray] | None:
        """Index box of the shape's bounding box in ``grid`` and the level values inside it."""
        box = grid.window(*self.bounds())
        if box is None:
            return None
        sub = grid.sub(box)
        pz, py, px = sub.mesh()
        if self.warp is not None:
            pz, py, px = (p + np.float32(self.warp_mm) * f(sub) for p, f in zip((pz, py, px), self.warp))
        radii = [part.radius(pz, py, px) for part in self.parts]
        if len(radii) == 1:
            level = radii[0]
        else:
            k = np.float32(self.blend)
            low = np.minimum.reduce(radii)
            level = low - k * np.log(sum(np.exp((low - r) / k) for r in radii))
        for hole in self.holes:
            level = np.maximum(level, 2 - hole.radius(pz, py, px))
        return box, level


def random_warp(
    rng: np.random.Generator, wavelength_mm: tuple[float, float] = (50.0, 120.0), n_waves: int = 3
) -> tuple[FourierField, FourierField, FourierField]:
    """Three independent smooth fields, one displacement component each."""
    return (
        FourierField.sample(rng, n_waves, wavelength_mm),
        FourierField.sample(rng, n_waves, wavelength_mm),
        FourierField.sample(rng, n_waves, wavelength_mm),
    )
