"""Random abdominal anatomy for the synthetic phantoms: per-patient geometry in physical millimetres.

A patient is sampled once (``sample_anatomy``) and can then be rendered onto any voxel grid
(``phantom_render.render_tissues``). Coordinates follow ``Grid``: z to the head, y to the front, x to the
patient's left, which in (Z, H, W) arrays reproduces the orientation of the preprocessed CHAOS volumes
(liver on the image left, spine and kidneys toward row 0, liver dome on the last slices). The origin is
the centre of the field of view in-plane and the top of the liver dome along z.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fsmis_bench.data.phantom_shapes import (
    Ellipsoid,
    FourierField,
    Grid,
    NoiseField,
    Shape,
    random_warp,
    rotation,
)


@dataclass(frozen=True)
class Torso:
    """Elliptic body cross-section around the abdominal cavity, with fat and muscle layers.

    Layers are level sets of the normalised body radius: skin below 1, subcutaneous fat below
    ``r_skin``, abdominal wall muscle below ``r_fat`` and the cavity below ``r_cavity``.
    """

    y0: float
    x0: float
    ax: float
    ay_ant: float
    ay_post: float
    r_skin: float
    r_fat: float
    r_cavity: float
    taper: float  # relative widening per 100 mm toward the head
    wobble: FourierField  # constant along z, perturbs the outline


@dataclass(frozen=True)
class Spine:
    """Vertebral column, psoas muscles and the great vessels in front of the spine (extruded along z)."""

    x: float
    y_body: float  # vertebral body centre at z = 0
    lordosis: float  # forward shift per mm toward the feet
    r_body: float
    disc_period: float
    disc_phase: float
    aorta: tuple[float, float, float]  # x offset, gap in front of the vertebra, radius
    ivc: tuple[float, float, float, float]  # x offset, gap, semi-axes (y, x)
    psoas_top: float
    psoas_r: float


@dataclass(frozen=True)
class Diaphragm:
    """Two elliptic domes (right higher than left); the lungs fill the cavity above them."""

    tops: tuple[float, float]  # right, left dome height
    xs: tuple[float, float]  # right, left dome centre
    y: float  # dome centre (front-back)
    half_width: float
    half_depth: float
    fall: float  # height lost at one half-width/half-depth from a dome centre

    def height(self, py: np.ndarray, px: np.ndarray) -> np.ndarray:
        dy = ((py - self.y) / self.half_depth) ** 2
        return np.maximum(
            *(
                top - self.fall * (((px - x) / self.half_width) ** 2 + dy)
                for top, x in zip(self.tops, self.xs)
            )
        )


@dataclass(frozen=True)
class Anatomy:
    torso: Torso
    spine: Spine
    diaphragm: Diaphragm
    organs: dict[str, Shape]
    liver_vessels: tuple[NoiseField, NoiseField]
    bowel: tuple[NoiseField, NoiseField]
    gas_fraction: float  # share of the stomach's front-to-back extent filled with gas
    z_top: float
    z_bottom: float
    default_slices: int
    fov_mm: float

    @property
    def box(self) -> tuple[np.ndarray, np.ndarray]:
        """Physical extent (mm, (z, y, x)) of the scan, whatever its resolution."""
        half = self.fov_mm / 2
        return np.array([self.z_bottom, -half, -half]), np.array([self.z_top, half, half])

    def grid(self, in_plane: int, n_slices: int | None) -> tuple[Grid, tuple[float, float, float]]:
        """Voxel grid and (sz, sy, sx) spacing; a different size resamples the same physical anatomy."""
        n = n_slices or self.default_slices
        sz, s = (self.z_top - self.z_bottom) / n, self.fov_mm / in_plane
        yx = (np.arange(in_plane) + 0.5 - in_plane / 2) * s
        return Grid(self.z_bottom + (np.arange(n) + 0.5) * sz, yx, yx.copy()), (sz, s, s)


def _organ(
    rng: np.random.Generator, parts: list[Ellipsoid], holes: Sequence[Ellipsoid] = (), warp_mm: float = 6.0
) -> Shape:
    """Organ shape with its own random smooth displacement field of amplitude ``warp_mm``."""
    return Shape(tuple(parts), tuple(holes), random_warp(rng), warp_mm)


def _torso(rng: np.random.Generator) -> Torso:
    """Body habitus: the cavity size and the fat and muscle layers around it are drawn independently."""
    u = rng.uniform
    ax_cav, ay_cav, post = u(115, 150), u(80, 110), u(0.85, 0.95)
    fat, muscle = u(6, 30), u(7, 14)
    a_ref = (ax_cav + ay_cav) / 2 + 2.5 + fat + muscle
    r_cavity = 1 - (2.5 + fat + muscle) / a_ref
    return Torso(
        y0=float(rng.normal(0, 6)),
        x0=float(rng.normal(0, 4)),
        ax=ax_cav / r_cavity,
        ay_ant=ay_cav / r_cavity,
        ay_post=ay_cav * post / r_cavity,
        r_skin=1 - 2.5 / a_ref,
        r_fat=1 - (2.5 + fat) / a_ref,
        r_cavity=r_cavity,
        taper=u(-0.02, 0.06),
        wobble=FourierField.sample(rng, 6, (60, 160), z_scale=0.0),
    )


def sample_anatomy(rng: np.random.Generator, modality: str) -> Anatomy:
    """Draw one patient: body habitus, organ sizes, positions and orientations, and the scan coverage."""
    u = rng.uniform
    torso = _torso(rng)
    x0, y0 = torso.x0, torso.y0
    ax_cav, ay_cav = torso.ax * torso.r_cavity, (torso.ay_ant + torso.ay_post) / 2 * torso.r_cavity
    bx, by = ax_cav / 135, ay_cav / 90  # organ geometry scales with the cavity
    r_body = u(16, 21)
    left_top = -u(45, 95)  # top of the left kidney below the liver dome
    spine = Spine(
        x=x0 + float(rng.normal(0, 3)),
        y_body=y0 - torso.ay_post * torso.r_fat + u(48, 62),
        lordosis=u(0.0, 0.1),
        r_body=r_body,
        disc_period=u(30, 36),
        disc_phase=u(0, 36),
        aorta=(u(8, 18), u(2, 6), u(9, 13)),
        ivc=(-u(18, 28), u(6, 12), u(7, 11), u(11, 16)),
        psoas_top=left_top - u(20, 50),
        psoas_r=u(13, 20),
    )
    xs, yb = spine.x, spine.y_body
    top = u(-4, 4)
    diaphragm = Diaphragm(
        (top, top - u(5, 20)), (x0 - 0.45 * ax_cav, x0 + 0.45 * ax_cav), y0, 0.6 * ax_cav, ay_cav, u(25, 45)
    )
    organs: dict[str, Shape] = {}

    # Liver: right lobe against the right wall, dome at z = 0, left lobe reaching across the midline in front.
    length = u(150, 205)
    a_top, a_tip = u(0.36, 0.42) * length, u(0.25, 0.32) * length
    right_lobe = Ellipsoid.make(
        (-a_top, y0 + by * u(-5, 15), x0 - bx * u(60, 75)),
        (a_top, by * u(75, 90), bx * u(60, 72)),
        rotation(u(-15, 15)),
    )
    tip = Ellipsoid.make(
        (-length + a_tip, y0 + by * u(-5, 20), x0 - bx * u(65, 85)),
        (a_tip, by * u(35, 50), bx * u(30, 45)),
        rotation(u(-20, 20), u(-15, 15)),
    )
    left_lobe = Ellipsoid.make(
        (-u(0.25, 0.35) * length, y0 + by * u(35, 55), x0 + bx * u(0, 30)),
        (u(0.15, 0.22) * length, by * u(25, 40), bx * u(50, 72)),
        rotation(u(-20, 20), u(-10, 10)),
    )
    organs["liver"] = _organ(rng, [right_lobe, tip, left_lobe], warp_mm=u(5, 9))
    gallbladder = Ellipsoid.make(
        (-length * u(0.55, 0.75), y0 + by * u(30, 55), x0 - bx * u(25, 45)),
        (u(22, 35), u(11, 17), u(11, 17)),
        rotation(0, u(-30, 30), u(-30, 30)),
    )
    organs["gallbladder"] = _organ(rng, [gallbladder], warp_mm=2.0)
    heart = Ellipsoid.make(
        (top + u(35, 55), y0 + by * u(20, 45), x0 + bx * u(0, 30)), (u(45, 60), u(40, 55), u(50, 65))
    )
    organs["heart"] = _organ(rng, [heart], warp_mm=4.0)

    # Spleen: crescent along the left posterolateral wall, its hilum facing forward and inward.
    a_spl = u(42, 62)
    spleen = Ellipsoid.make(
        (-u(10, 45) - a_spl, yb + u(-15, 20), x0 + ax_cav * u(0.7, 0.85)),
        (a_spl, u(48, 62), u(26, 36)),
        rotation(u(30, 60), u(-15, 15)),
    )
    hilum = Ellipsoid(spleen.point((0, 0, -1.7)), spleen.axes * (1.05, 0.75, 0.9), spleen.rotation)
    organs["spleen"] = _organ(rng, [spleen], [hilum], warp_mm=u(3, 6))

    # Kidneys beside the spine at the level of the spinal canal; upper poles medial, hila anteromedial.
    tops = {"kidney_left": left_top, "kidney_right": left_top - u(-5, 25)}
    for organ, side in (("kidney_left", 1.0), ("kidney_right", -1.0)):
        a_z = u(48, 62)
        kidney = Ellipsoid.make(
            (tops[organ] - a_z, yb - u(12, 28), xs + side * bx * u(55, 70)),
            (a_z, u(19, 24), u(23, 29)),
            rotation(side * u(20, 40), -side * u(8, 20)),
        )
        hilum = Ellipsoid(
            kidney.point((0, 0.35, -side * 0.95)), kidney.axes * (0.4, 0.45, 0.45), kidney.rotation
        )
        organs[organ] = _organ(rng, [kidney], [hilum], warp_mm=u(2, 4))
        organs[organ + "_medulla"] = Shape((kidney.scaled(0.62),), (hilum.scaled(1.2),))
        organs[organ + "_fat"] = Shape((kidney.scaled(1.0, u(5, 12)),))
    z_kidney = min(organs[k].parts[0].center[0] - organs[k].parts[0].axes[0] for k in tops)

    # Stomach (left, anterior, upper) and pancreas (across the spine in front of the aorta).
    stomach = Ellipsoid.make(
        (-u(40, 80), y0 + by * u(10, 40), x0 + bx * u(25, 55)),
        (u(35, 55), u(28, 40), u(35, 50)),
        rotation(u(-30, 30), u(-20, 20)),
    )
    organs["stomach"] = _organ(rng, [stomach], warp_mm=u(4, 8))
    z_pan, y_pan = left_top - u(5, 30), yb + r_body + u(22, 32)
    organs["pancreas"] = _organ(
        rng,
        [
            Ellipsoid.make((z_pan, y_pan - 20, xs + bx * 70), (14, 12, 30), rotation(u(20, 40))),
            Ellipsoid.make((z_pan - 5, y_pan, xs + bx * 20), (13, 11, 30), rotation(u(-10, 10))),
            Ellipsoid.make((z_pan - 22, y_pan - 5, xs - bx * 25), (18, 15, 17)),
        ],
        warp_mm=3.0,
    )

    # Coverage: from a margin above the dome down past the lower kidney pole (slight truncation allowed).
    sz, lo, hi = (5.0, 40, 60) if modality == "ct" else (7.7, 30, 46)
    z_top = u(10, 60) if modality == "ct" else u(0, 55)
    n = int(np.clip(round((z_top - z_kidney + u(-10, 70)) / sz), lo, hi))
    fov = 256 * (u(1.2, 1.55) if modality == "ct" else 1.25)
    box = (np.array([z_top - n * sz, -fov / 2, -fov / 2]), np.array([z_top, fov / 2, fov / 2]))
    return Anatomy(
        torso=torso,
        spine=spine,
        diaphragm=diaphragm,
        organs=organs,
        liver_vessels=(NoiseField.sample(rng, *box, 9.0), NoiseField.sample(rng, *box, 9.0)),
        bowel=(NoiseField.sample(rng, *box, 6.0), NoiseField.sample(rng, *box, 12.0)),
        gas_fraction=u(0.0, 0.45),
        z_top=z_top,
        z_bottom=z_top - n * sz,
        default_slices=n,
        fov_mm=fov,
    )
