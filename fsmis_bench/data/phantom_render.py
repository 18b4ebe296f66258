"""Rendering a sampled anatomy onto a voxel grid as a map of tissue codes.

Each tissue has an appearance class (intensities are assigned per modality in ``synthetic``) and,
when some dataset labels it, an organ name matching ``DatasetSpec.label_names``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fsmis_bench.data.phantom_anatomy import Anatomy, Torso
from fsmis_bench.data.phantom_shapes import Box, Grid, Shape


@dataclass(frozen=True)
class Tissue:
    """One tissue of the phantom."""

    name: str
    kind: str  # appearance class (shared by left/right kidney)
    organ: str | None  # dataset label name, if the dataset labels it


TISSUES: tuple[Tissue, ...] = (
    Tissue("air", "air", None),
    Tissue("skin", "skin", None),
    Tissue("fat", "fat", None),
    Tissue("muscle", "muscle", None),
    Tissue("visceral_fat", "visceral_fat", None),
    Tissue("lung", "lung", None),
    Tissue("heart", "heart", None),
    Tissue("bowel_wall", "bowel_wall", None),
    Tissue("bowel_fluid", "bowel_fluid", None),
    Tissue("bowel_chyme", "bowel_chyme", None),
    Tissue("bowel_gas", "gas", None),
    Tissue("stomach_wall", "bowel_wall", "stomach"),
    Tissue("stomach_fluid", "bowel_fluid", "stomach"),
    Tissue("stomach_gas", "gas", "stomach"),
    Tissue("pancreas", "pancreas", "pancreas"),
    Tissue("liver", "liver", "liver"),
    Tissue("liver_vessel", "liver_vessel", "liver"),
    Tissue("gallbladder", "gallbladder", "gallbladder"),
    Tissue("spleen", "spleen", "spleen"),
    Tissue("kidney_right_cortex", "kidney_cortex", "kidney_right"),
    Tissue("kidney_right_medulla", "kidney_medulla", "kidney_right"),
    Tissue("kidney_left_cortex", "kidney_cortex", "kidney_left"),
    Tissue("kidney_left_medulla", "kidney_medulla", "kidney_left"),
    Tissue("ivc", "ivc", "inferior_vena_cava"),
    Tissue("aorta", "aorta", "aorta"),
    Tissue("bone", "bone", None),
    Tissue("marrow", "marrow", None),
    Tissue("disc", "disc", None),
    Tissue("csf", "csf", None),
)
T = {t.name: code for code, t in enumerate(TISSUES)}


def _paint(
    codes: np.ndarray,
    grid: Grid,
    shape: Shape,
    code: int,
    where: np.ndarray | None = None,
) -> tuple[Box, np.ndarray] | None:
    """Set ``code`` inside the shape (where ``where`` holds); returns its index box and mask in that box."""
    hit = shape.level(grid)
    if hit is None:
        return None
    box, level = hit
    inside = level < 1
    if where is not None:
        inside &= where[box]
    codes[box][inside] = code
    return box, inside


def _paint_column(
    codes: np.ndarray,
    grid: Grid,
    code: int,
    center: tuple[np.ndarray | float, np.ndarray | float],
    radii: tuple[np.ndarray | float, np.ndarray | float],
    where: np.ndarray | None = None,
) -> None:
    """Set ``code`` inside an elliptic cylinder along z; centre (y, x) and radii (y, x) may vary per slice."""
    cy, cx, ry, rx = (np.broadcast_to(np.asarray(v, float), grid.z.shape) for v in (*center, *radii))
    present = (ry > 0.1) & (rx > 0.1)
    if not present.any():
        return
    lo = [grid.z[0], (cy - ry)[present].min(), (cx - rx)[present].min()]
    hi = [grid.z[-1], (cy + ry)[present].max(), (cx + rx)[present].max()]
    box = grid.window(np.array(lo), np.array(hi))
    if box is None:
        return
    sub = grid.sub(box)
    ry, rx = np.maximum(ry, 0.1)[:, None, None], np.maximum(rx, 0.1)[:, None, None]
    dy = (sub.y[None, :, None] - cy[:, None, None]) / ry
    dx = (sub.x[None, None, :] - cx[:, None, None]) / rx
    inside = (dy**2 + dx**2 < 1) & present[:, None, None]
    if where is not None:
        inside &= where[box]
    codes[box][inside] = code


def _torso_radius(torso: Torso, grid: Grid) -> np.ndarray:
    """Normalised radius of the body outline (1 on the skin) per voxel."""
    dy = grid.y[:, None] - torso.y0
    ay = np.where(dy >= 0, torso.ay_ant, torso.ay_post)
    rho = np.sqrt(((grid.x[None, :] - torso.x0) / torso.ax) ** 2 + (dy / ay) ** 2)
    rho = rho + 0.025 * torso.wobble(Grid(np.zeros(1), grid.y, grid.x))[0]
    scale = 1 + torso.taper * grid.z / 100  # slightly wider toward the head
    return (rho[None] / scale[:, None, None]).astype(np.float32)


def render_tissues(anat: Anatomy, grid: Grid) -> np.ndarray:
    """Tissue code (index into ``TISSUES``) of every voxel, painted back to front so organs stay whole."""
    t, sp, organs = anat.torso, anat.spine, anat.organs
    codes = np.zeros(grid.shape, np.uint8)
    rho = _torso_radius(t, grid)
    codes[rho < 1] = T["skin"]
    codes[rho < t.r_skin] = T["fat"]
    inner = rho < t.r_fat
    codes[inner] = T["muscle"]
    cavity = rho < t.r_cavity
    codes[cavity] = T["visceral_fat"]

    # Bowel loops fill the cavity in front of the retroperitoneum, reaching further back lower down.
    pz, py, px = grid.mesh()
    y_spine = sp.y_body - sp.lordosis * grid.z
    reach = 35 * np.clip((sp.psoas_top - pz) / 50, 0, 1)
    zone = cavity & (py > y_spine[:, None, None] + sp.r_body - reach)
    loops, content = anat.bowel[0](grid)[zone], anat.bowel[1](grid)[zone]
    bowel = np.full(loops.shape, T["visceral_fat"], np.uint8)
    bowel[loops > -0.15] = T["bowel_wall"]
    lumen = loops > 0.1
    bowel[lumen] = np.select(
        [content[lumen] > 0.3, content[lumen] < -0.6], [T["bowel_fluid"], T["bowel_gas"]], T["bowel_chyme"]
    )
    codes[zone] = bowel

    # Lungs fill the cavity above the diaphragm; the heart sits on it.
    codes[cavity & (pz > anat.diaphragm.height(py, px))] = T["lung"]
    _paint(codes, grid, organs["heart"], T["heart"], cavity)

    # Back muscles beside the spine and the psoas muscles growing below the kidneys.
    for side in (-1.0, 1.0):
        _paint_column(codes, grid, T["muscle"], (y_spine - sp.r_body - 24, sp.x + side * 34), (22, 28), inner)
        r_psoas = sp.psoas_r * np.clip((sp.psoas_top - grid.z) / 50, 0, 1)
        psoas_x = sp.x + side * (sp.r_body + 0.8 * r_psoas)
        _paint_column(codes, grid, T["muscle"], (y_spine + 2, psoas_x), (r_psoas, r_psoas), inner)

    for organ in ("kidney_left_fat", "kidney_right_fat"):
        _paint(codes, grid, organs[organ], T["visceral_fat"], inner)
    stomach_hit = organs["stomach"].level(grid)
    if stomach_hit is not None:  # wall, then fluid below an air-fluid level (the patient lies supine)
        box, level = stomach_hit
        stomach, region = organs["stomach"].parts[0], codes[box]
        gas_from = stomach.center[1] + (1 - 2 * anat.gas_fraction) * stomach.half_extent()[1]
        lumen = (level < 0.88) & cavity[box]
        region[(level < 1) & cavity[box]] = T["stomach_wall"]
        region[lumen] = T["stomach_fluid"]
        region[lumen & (grid.sub(box).y[None, :, None] > gas_from)] = T["stomach_gas"]
    _paint(codes, grid, organs["pancreas"], T["pancreas"], cavity)
    liver_hit = _paint(codes, grid, organs["liver"], T["liver"], cavity)
    if liver_hit is not None:
        box, inside = liver_hit
        f1, f2 = (np.abs(f(grid.sub(box))) for f in anat.liver_vessels)
        codes[box][inside & (f1 < 0.25) & (f2 < 0.25)] = T["liver_vessel"]
    _paint(codes, grid, organs["gallbladder"], T["gallbladder"], cavity)
    _paint(codes, grid, organs["spleen"], T["spleen"], cavity)
    for side in ("left", "right"):
        organ = f"kidney_{side}"
        hit = _paint(codes, grid, organs[organ], T[f"{organ}_cortex"], inner)
        medulla = organs[organ + "_medulla"].level(grid)
        if hit is not None and medulla is not None:
            kidney = np.zeros(grid.shape, bool)
            kidney[hit[0]] = hit[1]
            codes[medulla[0]][(medulla[1] < 1) & kidney[medulla[0]]] = T[f"{organ}_medulla"]

    # Great vessels and the vertebral column, painted last: organs never overlap them.
    ax, gap, r = sp.aorta
    _paint_column(codes, grid, T["aorta"], (y_spine + sp.r_body + gap + r, sp.x + ax), (r, r), inner)
    ix, gap, ry, rx = sp.ivc
    _paint_column(codes, grid, T["ivc"], (y_spine + sp.r_body + gap + ry, sp.x + ix), (ry, rx), inner)
    canal = y_spine - sp.r_body - 9
    _paint_column(codes, grid, T["bone"], (canal - 20, sp.x), (12, 5), inner)
    _paint_column(codes, grid, T["bone"], (canal, sp.x), (12, 12), inner)
    _paint_column(codes, grid, T["csf"], (canal, sp.x), (7, 7), inner)
    disc = np.cos(2 * np.pi * (grid.z - sp.disc_phase) / sp.disc_period) > 0.75
    r_vb = np.where(disc, 0.0, sp.r_body)
    _paint_column(codes, grid, T["disc"], (y_spine, sp.x), (sp.r_body, sp.r_body), inner)
    _paint_column(codes, grid, T["bone"], (y_spine, sp.x), (r_vb, r_vb), inner)
    _paint_column(codes, grid, T["marrow"], (y_spine, sp.x), (r_vb - 2.5, r_vb - 2.5), inner)
    return codes
