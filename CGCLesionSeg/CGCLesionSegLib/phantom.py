"""A synthetic four-channel brain MRI with glioma-like lesions, for the demo and for tests.

:func:`make_phantom` builds a skull-stripped head with FLAIR-, T1-, T1ce- and T2-like channels and
its ground truth in the BraTS label convention (1 necrotic core, 2 oedema, 4 enhancing rim; whole
lesion = label > 0). What it models, and why:

* **Anatomy.** The intracranial volume is an egg-shaped ellipsoid (wider posteriorly, flatter
  inferiorly) whose surface is pushed in and out by low-frequency noise. Under a thin, uneven shell of
  subarachnoid CSF lies a cortical grey-matter ribbon that is *folded*: sulci are thin sheets of CSF
  where a smooth 3-D noise field crosses zero (down to a varying depth), and grey matter is everything
  within a few millimetres of CSF (the cortex lines every sulcus, the interhemispheric fissure and the
  brain surface). White matter fills the rest. Two C-shaped lateral ventricles follow an arc in the
  sagittal plane on either side of the midline; thalami and lentiform nuclei are deep grey matter.
* **Lesions.** Each lesion is a blob whose radius is modulated by smooth noise (irregular, not a
  sphere), with a necrotic core of varying thickness inside an enhancing rim, and vasogenic oedema
  that spreads through white matter (finger-like) but largely spares cortex and CSF. Labels are
  nested by construction: necrosis ⊂ tumour core (necrosis + rim) ⊂ whole lesion.
* **Partial volume.** Labels are rendered on a grid ``oversample`` times finer per axis; each
  output voxel mixes the tissue intensities with the fraction of its sub-voxels in each class.
* **Contrast** (arbitrary scanner units, see :data:`TISSUE_INTENSITIES`): T1 WM > GM > CSF, lesion
  hypointense; T1ce like T1 with a bright enhancing rim; T2 CSF > GM > WM with bright oedema and
  necrosis; FLAIR CSF dark, GM > WM, oedema and tumour bright, necrosis intermediate.
* **Texture, bias and noise.** Within-tissue texture (smooth multiplicative noise, stronger in the
  lesion) makes the tissue intensity distributions overlap; each channel gets its own smooth
  multiplicative bias field; finally Rician noise (magnitude of signal plus complex Gaussian noise)
  with ``sigma = mean white-matter signal / snr`` per channel. The image is skull-stripped: every
  voxel outside the brain mask is exactly 0, every voxel inside is > 0.

The default size, 128×128×80 voxels (x×y×z) at 1.5 mm isotropic (192×192×120 mm), takes about
3–4 s to generate on 2 CPU cores with ``oversample=2``, and keeps the GMM stage of the demo fast.
The result is deterministic for a given ``seed`` and parameter set.

Arrays are ``(z, y, x)``. The geometry has identity direction in LPS: array x runs from the patient's
right to left, y from anterior to posterior, z from inferior to superior; the volume centre is at
the LPS origin (0, 0, 0).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from .image_io import Geometry, write_image

#: Channel names in the order the demo and BraTS use.
MODALITIES = ("flair", "t1", "t1ce", "t2")

#: Hard tissue classes rendered on the fine grid (internal); the public tissue map merges deep GM into GM.
_BG, _CSF, _GM, _DGM, _WM, _NEC, _RIM, _OED = range(8)
_CLASS_NAMES = ("background", "csf", "gm", "deep_gm", "wm", "necrosis", "enhancing", "oedema")

#: Public tissue map codes (``Phantom.tissue``).
TISSUE_LABELS = {0: "background", 1: "CSF", 2: "grey matter (cortical and deep)", 3: "white matter"}

#: BraTS label codes (``Phantom.labels``).
LESION_LABELS = {1: "necrotic core", 2: "oedema", 4: "enhancing rim"}

#: Mean noise-free signal per class and channel (arbitrary units, the scale of typical scanner output).
TISSUE_INTENSITIES: dict[str, dict[str, float]] = {
    #            CSF     GM   deepGM    WM   necrosis  rim   oedema
    "flair": dict(csf=150., gm=620., deep_gm=570., wm=480., necrosis=700., enhancing=1000., oedema=1050.),
    "t1":    dict(csf=250., gm=560., deep_gm=630., wm=760., necrosis=230., enhancing=420., oedema=470.),
    "t1ce":  dict(csf=260., gm=580., deep_gm=650., wm=770., necrosis=250., enhancing=1250., oedema=490.),
    "t2":    dict(csf=1500., gm=780., deep_gm=720., wm=600., necrosis=1350., enhancing=950., oedema=1250.),
}


@dataclass
class Phantom:
    """A generated case. All arrays are ``(z, y, x)`` on ``geometry``'s grid.

    ``channels``: modality name → float32 image (FLAIR, T1, T1ce, T2 order), 0 outside ``brain_mask``.
    ``brain_mask``: uint8, 1 inside the skull-stripped brain (including the CSF around it).
    ``tissue``: uint8 healthy-tissue map (:data:`TISSUE_LABELS`), i.e. what a voxel would be without
    the lesion. ``labels``: uint8 BraTS ground truth (:data:`LESION_LABELS`).
    ``noise_sigma``: per-channel sigma of the complex Gaussian noise; ``snr``: the requested SNR.
    ``lesion_centers_zyx``: voxel index of each lesion's centre. ``params``: the generation settings.
    """

    channels: dict[str, np.ndarray]
    geometry: Geometry
    brain_mask: np.ndarray
    tissue: np.ndarray
    labels: np.ndarray
    snr: float
    noise_sigma: dict[str, float]
    lesion_centers_zyx: list[tuple[int, int, int]] = field(default_factory=list)
    params: dict = field(default_factory=dict)

    @property
    def modalities(self) -> list[str]:
        return list(self.channels)

    def channel_list(self) -> list[np.ndarray]:
        """Channels as a list in :attr:`modalities` order (FLAIR, T1, T1ce, T2)."""
        return [self.channels[m] for m in self.channels]


# ----------------------------------------------------------------------------------------------
# Smooth noise: random cubic B-spline coefficients on a coarse lattice, evaluated separably.
# ----------------------------------------------------------------------------------------------

def _bspline3(u: np.ndarray) -> np.ndarray:
    """Cubic B-spline kernel (support |u| < 2)."""
    a = np.abs(u)
    out = np.zeros_like(a)
    inner = a < 1
    outer = (a >= 1) & (a < 2)
    out[inner] = 2.0 / 3.0 - a[inner] ** 2 + 0.5 * a[inner] ** 3
    out[outer] = (2.0 - a[outer]) ** 3 / 6.0
    return out


def _bspline_mean_square() -> float:
    """Mean over the lattice phase of sum_k B3(t - k)^2: the 1-D variance factor of the field."""
    t = (np.arange(64) + 0.5) / 64.0
    k = np.arange(-3, 4)
    return float(np.mean(np.sum(_bspline3(t[:, None] - k[None, :]) ** 2, axis=1)))


_BSPLINE_VAR_1D = _bspline_mean_square()


class _SmoothNoise:
    """Zero-mean, unit-variance Gaussian random field with features of about ``wavelength_mm``.

    It is defined over a box (mm, ``(z, y, x)`` order) by random coefficients on a lattice of spacing
    ``wavelength/2``; :meth:`grid` evaluates it on any axis-aligned grid inside the box, so the same
    field can be sampled at the output resolution and on the oversampled label grid.
    """

    def __init__(self, rng: np.random.Generator, lo_zyx: Sequence[float], hi_zyx: Sequence[float],
                 wavelength_mm: float) -> None:
        self.h = float(wavelength_mm) / 2.0
        self.start = [float(lo) - 2.0 * self.h for lo in lo_zyx]
        counts = [int(math.ceil((hi - lo) / self.h)) + 5 for lo, hi in zip(lo_zyx, hi_zyx)]
        self.coef = rng.standard_normal(counts).astype(np.float32)
        self.scale = float(1.0 / math.sqrt(_BSPLINE_VAR_1D ** 3))

    def _weights(self, axis: int, pos: np.ndarray) -> np.ndarray:
        nodes = self.start[axis] + self.h * np.arange(self.coef.shape[axis])
        return _bspline3((np.asarray(pos, float)[:, None] - nodes[None, :]) / self.h).astype(np.float32)

    def grid(self, pz: np.ndarray, py: np.ndarray, px: np.ndarray) -> np.ndarray:
        """Field on the grid ``pz × py × px`` (1-D mm positions): ``(len(pz), len(py), len(px))`` float32."""
        wz, wy, wx = self._weights(0, pz), self._weights(1, py), self._weights(2, px)
        t = np.tensordot(self.coef, wx, axes=([2], [1]))           # (a, b, X)
        t = np.einsum("yb,abx->ayx", wy, t, optimize=True)          # (a, Y, X)
        a = t.shape[0]
        out = (wz @ t.reshape(a, -1)).reshape(len(pz), len(py), len(px))
        out *= self.scale
        return out


# ----------------------------------------------------------------------------------------------
# Geometry helpers
# ----------------------------------------------------------------------------------------------

def _axis_positions(n: int, spacing: float, oversample: int) -> np.ndarray:
    """mm positions (relative to the volume centre) of the ``n * oversample`` sub-voxel centres."""
    sub = (np.arange(oversample) + 0.5) / oversample - 0.5
    idx = (np.arange(n)[:, None] + sub[None, :]).ravel()
    return ((idx - (n - 1) / 2.0) * spacing).astype(np.float64)


def _block_mean(a: np.ndarray, o: int) -> np.ndarray:
    """Average ``o × o × o`` blocks: fine ``(Z*o, Y*o, X*o)`` → ``(Z, Y, X)`` float32.

    Summed axis by axis with strided slices (much faster than a mean over a 6-D reshape); booleans
    are summed as uint8 (at most 64 per block).
    """
    if o == 1:
        return a.astype(np.float32)
    acc = a.view(np.uint8) if a.dtype == np.bool_ else a.astype(np.float32, copy=False)
    for axis in (2, 1, 0):
        parts = [acc[(slice(None),) * axis + (slice(k, None, o),)] for k in range(o)]
        total = parts[0].copy()
        for part in parts[1:]:
            total += part
        acc = total
    return acc.astype(np.float32) / np.float32(o ** 3)


@dataclass(frozen=True)
class _Anatomy:
    """Random anatomical parameters drawn once per phantom (mm, relative to the volume centre)."""

    ax: float
    ay: float
    az_up: float
    az_down: float
    scale: float          # brain size relative to an adult (ventricle and deep-GM sizes follow it)
    z0: float             # vertical offset of the brain centre
    ventricle_scale: float


def _draw_anatomy(rng: np.random.Generator, fov_zyx: np.ndarray) -> _Anatomy:
    fz, fy, fx = fov_zyx
    ay = min(0.44 * fy, 86.0)
    ax = min(0.36 * fx, 0.80 * ay)
    az_up = min(0.46 * fz, 62.0)
    az_down = 0.88 * az_up
    scale = ay / 86.0
    return _Anatomy(ax=ax * rng.uniform(0.95, 1.03), ay=ay * rng.uniform(0.96, 1.0),
                    az_up=az_up * rng.uniform(0.96, 1.0), az_down=az_down,
                    scale=scale, z0=-0.02 * fz, ventricle_scale=float(rng.uniform(0.85, 1.25)))


# ----------------------------------------------------------------------------------------------
# Healthy anatomy on the fine grid
# ----------------------------------------------------------------------------------------------

def _render_healthy(rng: np.random.Generator, pz: np.ndarray, py: np.ndarray, px: np.ndarray,
                    an: _Anatomy, box_lo: np.ndarray, box_hi: np.ndarray,
                    cortex_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Fine label map (uint8, classes ``_BG.._WM``) and the approximate depth below the
    intracranial surface (mm, float32) on the grid ``pz × py × px``."""
    Z = (pz - an.z0)[:, None, None].astype(np.float32)
    Y = py[None, :, None].astype(np.float32)
    X = px[None, None, :].astype(np.float32)
    # Egg shape: wider posteriorly (+y is posterior), flatter below.
    ax = an.ax * (1.0 + 0.07 * Y / an.ay)
    az = np.where(Z > 0, np.float32(an.az_up), np.float32(an.az_down))
    qx, qy, qz = X / ax, Y / an.ay, Z / az
    r = np.sqrt(qx * qx + qy * qy + qz * qz)
    # |grad r| for the first-order distance-to-surface estimate (depth ≈ (1 - r) / |grad r|).
    g = np.sqrt((qx / ax) ** 2 + (qy / an.ay) ** 2 + (qz / az) ** 2) / np.maximum(r, 1e-3)
    del qx, qy, qz
    head_noise = _SmoothNoise(rng, box_lo, box_hi, 55.0).grid(pz, py, px)
    depth = (1.0 + 0.035 * head_noise - r) / np.maximum(g, 1e-4)
    depth = np.minimum(depth, 200.0).astype(np.float32)
    del head_noise, g
    icv = depth > 0

    # Subarachnoid CSF: an uneven shell 0.5-3 mm thick between the intracranial surface and the brain.
    shell = np.clip(1.6 + 0.7 * _SmoothNoise(rng, box_lo, box_hi, 25.0).grid(pz, py, px), 0.5, 3.0)
    csf = icv & (depth < shell)
    surface_gm = depth < shell + cortex_mm
    del shell

    # Sulci: thin sheets where a smooth field crosses zero, down to a depth that varies (7-24 mm).
    sulcus_wavelength = 15.0
    sulc_depth = np.clip(15.0 + 5.0 * _SmoothNoise(rng, box_lo, box_hi, 40.0).grid(pz, py, px), 7.0, 24.0)
    # The field is sampled at points pulled towards the surface along rays from the brain centre
    # (p / r**0.8), so its zero sheets run roughly radially, as sulci do, instead of forming closed
    # shells parallel to the surface. Only the outer band where sulci can exist is evaluated.
    band = np.full(depth.shape, np.inf, dtype=np.float32)
    where = np.nonzero(icv & (depth < 24.0 + cortex_mm))
    rr = np.maximum(r[where], 0.05) ** 0.8
    pts = np.stack([np.broadcast_to(Z, depth.shape)[where] / rr, np.broadcast_to(Y, depth.shape)[where] / rr,
                    np.broadcast_to(X, depth.shape)[where] / rr])
    del rr
    ext = np.array([an.az_up, an.ay, an.ax * 1.1]) * 1.15 + sulcus_wavelength
    step = 1.5
    lattice = [np.arange(-e, e + step, step) for e in ext]
    sulc_grid = _SmoothNoise(rng, -ext - step, ext + step, sulcus_wavelength).grid(*lattice)
    coords = (pts + ext[:, None]) / step
    band[where] = np.abs(ndimage.map_coordinates(sulc_grid, coords, order=1, mode="nearest"))
    del pts, coords, sulc_grid, where
    # The median |grad| of a unit field of wavelength L is ~3.7 / L per mm (measured): convert the
    # sulcal CSF half-width (0.6 mm) and the cortical thickness to field units.
    grad_typ = 3.7 / sulcus_wavelength
    csf_half = 0.6 * grad_typ
    sulcus_csf = icv & (band < csf_half) & (depth < sulc_depth)
    sulcus_gm = icv & (band < csf_half + grad_typ * cortex_mm) & (depth < sulc_depth + cortex_mm)
    del band

    # Interhemispheric fissure: a wobbly midline sheet, absent in the central core that holds the
    # corpus callosum, ventricles and deep grey matter.
    wob_noise = _SmoothNoise(rng, box_lo, box_hi, 50.0)
    wob = 2.0 * wob_noise.grid(pz, py, np.zeros(1))               # (Z, Y, 1)
    s = an.scale
    yc, zc, vy, vz = 4.0 * s, -13.0 * s, 30.0 * s, 16.0 * s    # ventricle arc: centre and semi-axes
    core = (((Y - yc) / (vy + 10.0 * s)) ** 2 + ((Z - zc + 4.0 * s) / (vz + 12.0 * s)) ** 2) < 1.0
    mid = np.abs(X - wob)
    fissure_csf = icv & (mid < 0.9) & ~core
    fissure_gm = icv & (mid < 0.9 + cortex_mm) & ~core
    del mid

    labels = np.full(depth.shape, _WM, dtype=np.uint8)
    labels[~icv] = _BG
    labels[icv & (surface_gm | sulcus_gm | fissure_gm)] = _GM
    labels[csf | sulcus_csf | fissure_csf] = _CSF
    del surface_gm, sulcus_gm, fissure_gm, csf, sulcus_csf, fissure_csf

    # Deep grey matter: thalami and lentiform nuclei (ellipsoids), before the ventricles.
    for cx, cy, cz, rx, ry, rz in ((10, 8, -14, 7, 11, 8), (22, -4, -10, 5, 12, 8)):
        for side in (-1.0, 1.0):
            e = ((X - side * cx * s) / (rx * s)) ** 2 + ((Y - cy * s) / (ry * s)) ** 2 + \
                ((Z - cz * s) / (rz * s)) ** 2
            labels[(e < 1.0) & icv & (labels == _WM)] = _DGM

    # Lateral ventricles: C-shaped tubes along an elliptical arc in the sagittal plane (long and
    # flat: the bodies run antero-posteriorly, the frontal horns and atria curve down).
    vs = an.ventricle_scale
    ey, ez = (Y - yc) / vy, (Z - zc) / vz
    re = np.sqrt(ey * ey + ez * ez)
    grad_re = np.sqrt((ey / vy) ** 2 + (ez / vz) ** 2) / np.maximum(re, 1e-3)
    rho = (re - 1.0) / np.maximum(grad_re, 1e-4)    # mm from the arc, first order
    phi = np.arctan2(-ey, ez)                        # 0 = superior, > 0 = anterior
    del ey, ez, re, grad_re
    lo, hi = -1.55, 1.45                             # radians: atrium (posterior) to frontal horn
    mid_phi, half = (lo + hi) / 2.0, (hi - lo) / 2.0
    taper = np.sqrt(np.clip(1.0 - ((phi - mid_phi) / half) ** 8, 0.0, 1.0))
    widen = 1.0 + 0.25 * np.clip(phi, 0.0, None) + 0.2 * np.clip(-phi - 0.8, 0.0, None)
    half_x = (5.5 * s * vs) * taper * widen
    half_r = (4.5 * s * vs) * taper
    for side in (-1.0, 1.0):
        xc = side * (half_x + 1.2 * s)               # septum pellucidum between the two
        ev = ((X - xc) / np.maximum(half_x, 1e-3)) ** 2 + (rho / np.maximum(half_r, 1e-3)) ** 2
        labels[(ev < 1.0) & icv] = _CSF
    # Third ventricle: a thin midline slit between the thalami.
    third = (np.abs(X) < 1.5 * s) & ((((Y - 5.0 * s) / (12.0 * s)) ** 2 + ((Z + 14.0 * s) / (7.0 * s)) ** 2) < 1.0)
    labels[third & icv] = _CSF
    return labels, depth


# ----------------------------------------------------------------------------------------------
# Lesions
# ----------------------------------------------------------------------------------------------

def _choose_centers(rng: np.random.Generator, wm_frac: np.ndarray, depth: np.ndarray,
                    spacing_zyx: np.ndarray, radii: Sequence[float]) -> list[np.ndarray]:
    """Voxel centres (z, y, x) deep in white matter, far from the surface and from each other."""
    parenchyma = wm_frac >= 0.5
    # Distance (mm) to the nearest voxel that is not white matter: keeps the tumour core in WM.
    dist = ndimage.distance_transform_edt(parenchyma, sampling=spacing_zyx)
    centers: list[np.ndarray] = []
    for r in radii:
        ok = (dist >= 0.45 * r) & (depth >= r + 8.0)
        for c in centers:
            zz, yy, xx = np.ogrid[:ok.shape[0], :ok.shape[1], :ok.shape[2]]
            d2 = ((zz - c[0]) * spacing_zyx[0]) ** 2 + ((yy - c[1]) * spacing_zyx[1]) ** 2 + \
                 ((xx - c[2]) * spacing_zyx[2]) ** 2
            ok &= d2 > (2.6 * max(r, 8.0)) ** 2
        cand = np.argwhere(ok)
        if len(cand) == 0:  # small field of view: fall back to the deepest white matter
            score = dist + 0.1 * depth
            for c in centers:
                zz, yy, xx = np.ogrid[:ok.shape[0], :ok.shape[1], :ok.shape[2]]
                far = (((zz - c[0]) * spacing_zyx[0]) ** 2 + ((yy - c[1]) * spacing_zyx[1]) ** 2 +
                       ((xx - c[2]) * spacing_zyx[2]) ** 2) > (2.0 * r) ** 2
                score = np.where(far, score, -np.inf)
            cand = np.argwhere(score == score.max())
        centers.append(cand[rng.integers(len(cand))])
    return centers


def _insert_lesion(rng: np.random.Generator, labels: np.ndarray, pz: np.ndarray, py: np.ndarray,
                   px: np.ndarray, center_mm_zyx: np.ndarray, radius: float, oedema_mm: float,
                   irregularity: float) -> None:
    """Paint one lesion (classes ``_NEC``, ``_RIM``, ``_OED``) into the fine label map in place."""
    reach = (radius + oedema_mm) * (1.0 + 3.0 * irregularity) + 4.0
    sl = []
    for pos, c in zip((pz, py, px), center_mm_zyx):
        idx = np.nonzero(np.abs(pos - c) <= reach)[0]
        sl.append(slice(int(idx[0]), int(idx[-1]) + 1) if len(idx) else slice(0, 0))
    qz, qy, qx = pz[sl[0]], py[sl[1]], px[sl[2]]
    if min(len(qz), len(qy), len(qx)) == 0:
        return
    lo = center_mm_zyx - reach
    hi = center_mm_zyx + reach
    n_shape = _SmoothNoise(rng, lo, hi, max(0.9 * radius, 6.0)).grid(qz, qy, qx)
    n_core = _SmoothNoise(rng, lo, hi, max(0.7 * radius, 5.0)).grid(qz, qy, qx)
    n_oed = _SmoothNoise(rng, lo, hi, max(0.8 * (radius + oedema_mm), 10.0)).grid(qz, qy, qx)
    d = np.sqrt(((qz - center_mm_zyx[0]) ** 2)[:, None, None] + ((qy - center_mm_zyx[1]) ** 2)[None, :, None]
                + ((qx - center_mm_zyx[2]) ** 2)[None, None, :]).astype(np.float32)
    # Radius modulated by smooth noise: irregular, lobulated outline (never below 45 % of the radius).
    outer = radius * np.clip(1.0 + irregularity * n_shape, 0.45, None)
    tumour = d < outer
    # Necrotic core: 40-75 % of the local radius, so the enhancing rim is thick on one side, thin on another.
    necrosis = d < outer * np.clip(0.58 + 0.12 * n_core, 0.40, 0.75)
    # Oedema: a wider irregular region; it follows white matter and deep GM, spares cortex and CSF except
    # right next to the tumour, and always surrounds the tumour by at least ~2 mm.
    oed_radius = (radius + oedema_mm) * np.clip(1.0 + 1.3 * irregularity * n_oed, 0.5, None)
    oed_region = d < oed_radius
    sub = labels[sl[0], sl[1], sl[2]]
    brain = sub != _BG
    spread = (sub == _WM) | (sub == _DGM) | (sub == _OED)
    near = d < outer + 2.5 + 0.25 * oedema_mm
    oedema = brain & ((oed_region & spread) | near)
    # Oedema is one region around the tumour: drop islands not connected to it.
    comp, n_comp = ndimage.label(oedema | (tumour & brain))
    if n_comp > 1:
        ids = np.unique(comp[tumour & brain])
        oedema &= np.isin(comp, ids[ids > 0])
    # A lesion can sit next to a previous one: never downgrade an existing tumour label.
    keep = (sub == _NEC) | (sub == _RIM)
    sub[oedema & ~keep] = _OED
    sub[tumour & brain & (sub != _NEC)] = _RIM
    sub[necrosis & brain] = _NEC


def _white_matter_hyperintensities(rng: np.random.Generator, tissue: np.ndarray, labels: np.ndarray,
                                   depth: np.ndarray, spacing_zyx: np.ndarray, n: int | None) -> np.ndarray:
    """Fraction map ``(z, y, x)`` float32 of a few small round white-matter hyperintensities placed in
    white matter, away from the lesion (> 10 mm) and the surface (> 8 mm)."""
    out = np.zeros(tissue.shape, np.float32)
    n = int(rng.integers(3, 8)) if n is None else int(n)
    if n == 0:
        return out
    ok = (tissue == 3) & (labels == 0) & (depth > 8.0)
    if labels.any():
        ok &= ndimage.distance_transform_edt(labels == 0, sampling=spacing_zyx) > 10.0
    cand = np.argwhere(ok)
    if len(cand) == 0:
        return out
    h = float(spacing_zyx.min())
    for c in cand[rng.choice(len(cand), size=min(n, len(cand)), replace=False)]:
        r = float(rng.uniform(1.5, 3.5))
        c_mm = c * spacing_zyx + rng.uniform(-0.5, 0.5, 3) * spacing_zyx
        reach = np.ceil((r + 2 * h) / spacing_zyx).astype(int)
        lo = np.maximum(c - reach, 0)
        hi = np.minimum(c + reach + 1, tissue.shape)
        zz, yy, xx = (np.arange(a, b) * s for a, b, s in zip(lo, hi, spacing_zyx))
        d = np.sqrt(((zz - c_mm[0]) ** 2)[:, None, None] + ((yy - c_mm[1]) ** 2)[None, :, None]
                    + ((xx - c_mm[2]) ** 2)[None, None, :])
        f = np.clip((r - d) / h + 0.5, 0.0, 1.0).astype(np.float32)   # partial volume at the edge
        box = out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        np.maximum(box, f, out=box)
    return out


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------

def make_phantom(shape_xyz: Sequence[int] = (128, 128, 80), spacing_xyz: Sequence[float] = (1.5, 1.5, 1.5),
                 seed: int = 0, snr: float = 20.0, n_lesions: int = 1, lesion_radius_mm: float | None = None,
                 oedema_mm: float | None = None, irregularity: float = 0.28, cortex_mm: float = 2.8,
                 texture: float = 0.05, bias: float = 0.10, oversample: int = 2,
                 oedema_fade: float = 0.55, n_wmh: int | None = None) -> Phantom:
    """Generate a four-channel brain MRI phantom with ground truth.

    ``shape_xyz``: voxels x×y×z (default 128×128×80). ``spacing_xyz``: mm (default 1.5 isotropic);
    anisotropic spacing is fine (e.g. 1×1×5 mm FLAIR-like). The brain is scaled to the field of view.
    ``seed``: everything random derives from it (same seed and settings → identical arrays).
    ``snr``: per channel, mean white-matter signal / sigma of the complex Gaussian noise (Rician
    magnitude noise); ``float('inf')`` gives a noise-free phantom. ``n_lesions``: 0 or more.
    ``lesion_radius_mm`` / ``oedema_mm``: tumour radius and oedema margin (drawn per lesion when None:
    12-17 mm and 5-10 mm for one lesion, smaller for several). ``irregularity``: relative std of the
    tumour radius (0 → a sphere). ``cortex_mm``: cortical ribbon thickness. ``texture``: relative std
    of the within-tissue texture in healthy tissue (twice that in the lesion). ``bias``: std of the
    log bias field (0 → none). ``oversample``: sub-voxels per axis for partial-volume rendering.
    ``oedema_fade``: how much of the oedema's contrast is lost at its outer edge (infiltrative oedema
    fades into white matter over ~12 mm; 0 → uniform oedema). ``n_wmh``: number of small white-matter
    hyperintensities (1.5-3.5 mm, FLAIR/T2 bright, *not* part of the ground truth, as incidental
    small-vessel lesions are not in BraTS labels); None → 3-7.
    """
    shape_xyz = tuple(int(v) for v in shape_xyz)
    # NIfTI stores spacing and origin as float32: use float32-exact values so files round-trip exactly.
    spacing_xyz = tuple(float(np.float32(v)) for v in spacing_xyz)
    if len(shape_xyz) != 3 or min(shape_xyz) < 8:
        raise ValueError(f"shape_xyz must be three sizes of at least 8 voxels, got {shape_xyz}")
    if len(spacing_xyz) != 3 or min(spacing_xyz) <= 0:
        raise ValueError(f"spacing_xyz must be three positive values in mm, got {spacing_xyz}")
    if not snr > 0:
        raise ValueError(f"snr must be positive (float('inf') for no noise), got {snr}")
    if n_lesions < 0:
        raise ValueError(f"n_lesions must be 0 or more, got {n_lesions}")
    if oversample < 1 or oversample > 4:
        raise ValueError(f"oversample must be 1-4, got {oversample}")
    if irregularity < 0 or texture < 0 or bias < 0:
        raise ValueError(f"irregularity, texture and bias must be >= 0, got {irregularity}, {texture}, {bias}")
    if not 0.0 <= oedema_fade <= 1.0:
        raise ValueError(f"oedema_fade must be in [0, 1], got {oedema_fade}")
    if n_wmh is not None and n_wmh < 0:
        raise ValueError(f"n_wmh must be 0 or more, got {n_wmh}")
    if cortex_mm <= 0:
        raise ValueError(f"cortex_mm must be positive, got {cortex_mm}")
    params = dict(shape_xyz=list(shape_xyz), spacing_xyz=list(spacing_xyz), seed=int(seed), snr=float(snr),
                  n_lesions=int(n_lesions), lesion_radius_mm=lesion_radius_mm, oedema_mm=oedema_mm,
                  irregularity=irregularity, cortex_mm=cortex_mm, texture=texture, bias=bias,
                  oversample=oversample, oedema_fade=oedema_fade, n_wmh=n_wmh)

    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 20241]))
    anat_rng, lesion_rng, image_rng, wmh_rng = (np.random.default_rng(s) for s in rng.bit_generator.seed_seq.spawn(4))

    nx, ny, nz = shape_xyz
    sx, sy, sz = spacing_xyz
    shape_zyx = (nz, ny, nx)
    spacing_zyx = np.array([sz, sy, sx])
    fov_zyx = np.array(shape_zyx) * spacing_zyx
    box_lo, box_hi = -fov_zyx / 2.0 - 1.0, fov_zyx / 2.0 + 1.0
    o = int(oversample)

    an = _draw_anatomy(anat_rng, fov_zyx)
    pz, py, px = (_axis_positions(n, s, o) for n, s in zip(shape_zyx, spacing_zyx))
    fine, depth_fine = _render_healthy(anat_rng, pz, py, px, an, box_lo, box_hi, cortex_mm)
    depth = _block_mean(depth_fine, o)
    del depth_fine

    # Healthy-tissue map at output resolution (before lesions): majority of CSF / GM+deep GM / WM.
    frac_healthy = {k: _block_mean(fine == k, o) for k in (_BG, _CSF, _GM, _DGM, _WM)}
    icv_frac = 1.0 - frac_healthy[_BG]
    brain_mask = icv_frac >= 0.5
    tissue = np.zeros(shape_zyx, np.uint8)
    stack = np.stack([frac_healthy[_CSF], frac_healthy[_GM] + frac_healthy[_DGM], frac_healthy[_WM]])
    tissue[brain_mask] = (np.argmax(stack, axis=0) + 1).astype(np.uint8)[brain_mask]
    del stack

    # Lesions.
    centers_vox: list[tuple[int, int, int]] = []
    if n_lesions:
        shrink = 1.0 if n_lesions == 1 else 0.75
        radii = [float(lesion_radius_mm) if lesion_radius_mm is not None
                 else float(lesion_rng.uniform(12.0, 17.0)) * shrink * an.scale for _ in range(n_lesions)]
        margins = [float(oedema_mm) if oedema_mm is not None
                   else float(lesion_rng.uniform(5.0, 10.0)) * shrink * an.scale for _ in range(n_lesions)]
        wm_frac = frac_healthy[_WM] + frac_healthy[_DGM]
        centers = _choose_centers(lesion_rng, wm_frac, depth, spacing_zyx, radii)
        for c, r, m in zip(centers, radii, margins):
            c_mm = (c - (np.array(shape_zyx) - 1) / 2.0) * spacing_zyx
            # Jitter within the voxel so the lesion is not aligned with the grid.
            c_mm = c_mm + lesion_rng.uniform(-0.5, 0.5, 3) * spacing_zyx
            _insert_lesion(lesion_rng, fine, pz, py, px, c_mm, r, m, irregularity)
            centers_vox.append(tuple(int(v) for v in c))

    # Partial-volume fractions of every class, and nested ground truth from cumulative fractions.
    frac = [_block_mean(fine == k, o) for k in range(8)]
    del fine
    whole = (frac[_NEC] + frac[_RIM] + frac[_OED]) >= 0.5
    core = (frac[_NEC] + frac[_RIM]) >= 0.5
    necro = frac[_NEC] >= 0.5
    labels = np.zeros(shape_zyx, np.uint8)
    labels[whole & brain_mask] = 2
    labels[core & brain_mask] = 4
    labels[necro & brain_mask] = 1

    # Oedema contrast fades with distance from the tumour core (infiltrative margin).
    core_any = (frac[_NEC] + frac[_RIM]) > 0.05
    if core_any.any() and oedema_fade > 0:
        d_core = ndimage.distance_transform_edt(~core_any, sampling=spacing_zyx).astype(np.float32)
        fade = 1.0 - np.float32(oedema_fade) * np.clip(d_core / 12.0, 0.0, 1.0)
        del d_core
    else:
        fade = np.ones(shape_zyx, np.float32)

    # Incidental small white-matter hyperintensities (not lesion in the ground truth).
    wmh = _white_matter_hyperintensities(wmh_rng, tissue, labels, depth, spacing_zyx, n_wmh)
    wmh = np.minimum(wmh, frac[_WM])
    frac[_WM] = frac[_WM] - wmh

    # Texture: a field shared by all channels (anatomy) plus a per-channel one.
    pz1, py1, px1 = (_axis_positions(n, s, 1) for n, s in zip(shape_zyx, spacing_zyx))
    tex_wavelength = max(3.0, 2.0 * float(spacing_zyx.min()))
    shared_tex = _SmoothNoise(image_rng, box_lo, box_hi, tex_wavelength).grid(pz1, py1, px1)
    lesion_frac = frac[_NEC] + frac[_RIM] + frac[_OED]
    tex_amp = np.float32(texture) * (1.0 + lesion_frac)        # lesions are more heterogeneous

    channels: dict[str, np.ndarray] = {}
    noise_sigma: dict[str, float] = {}
    for name in MODALITIES:
        table = TISSUE_INTENSITIES[name]
        signal = np.zeros(shape_zyx, np.float32)
        wm_level, oed_level = np.float32(table["wm"]), np.float32(table["oedema"])
        for k, cls in enumerate(_CLASS_NAMES):
            if k in (_BG, _OED):
                continue
            signal += frac[k] * np.float32(table[cls])
        signal += frac[_OED] * (wm_level + fade * (oed_level - wm_level))
        signal += wmh * (wm_level + np.float32(0.55) * (oed_level - wm_level))
        own_tex = _SmoothNoise(image_rng, box_lo, box_hi, tex_wavelength).grid(pz1, py1, px1)
        signal *= 1.0 + tex_amp * (0.8 * shared_tex + 0.6 * own_tex)
        if bias > 0:
            log_bias = _SmoothNoise(image_rng, box_lo, box_hi, 160.0).grid(pz1, py1, px1)
            signal *= np.exp(np.float32(bias) * log_bias)
        np.maximum(signal, 0.0, out=signal)
        sigma = float(table["wm"] / snr) if math.isfinite(snr) else 0.0
        if sigma > 0:
            re = signal + np.float32(sigma) * image_rng.standard_normal(shape_zyx, dtype=np.float32)
            im = np.float32(sigma) * image_rng.standard_normal(shape_zyx, dtype=np.float32)
            img = np.sqrt(re * re + im * im)
        else:
            img = signal
        img[~brain_mask] = 0.0
        # Skull-stripped convention: background exactly 0, brain strictly positive.
        img[brain_mask] = np.maximum(img[brain_mask], np.float32(1e-3))
        channels[name] = img.astype(np.float32, copy=False)
        noise_sigma[name] = sigma

    origin_xyz = tuple(float(np.float32(-(n - 1) / 2.0 * s)) for n, s in zip(shape_xyz, spacing_xyz))
    geometry = Geometry(shape_zyx=shape_zyx, spacing=spacing_xyz, origin=origin_xyz,
                        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return Phantom(channels=channels, geometry=geometry, brain_mask=brain_mask.astype(np.uint8),
                   tissue=tissue, labels=labels, snr=float(snr), noise_sigma=noise_sigma,
                   lesion_centers_zyx=centers_vox, params=params)


def save_phantom(phantom: Phantom, folder: str | Path, case_name: str = "phantom") -> dict[str, Path]:
    """Write the phantom in BraTS layout: ``folder/<case>/<case>_{flair,t1,t1ce,t2,seg,mask}.nii.gz``
    plus ``<case>_phantom.json`` (generation settings, contrast table, label codes).

    Returns ``{"flair", "t1", "t1ce", "t2", "seg", "mask", "info", "case_dir"}`` → paths. A folder of
    such cases is a tiny training cohort (see :func:`make_cohort`).
    """
    if not case_name or any(c in case_name for c in "/\\") or case_name.startswith("."):
        raise ValueError(f"case_name must be a plain file name, got {case_name!r}")
    case_dir = Path(folder) / case_name
    case_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, arr in phantom.channels.items():
        paths[name] = write_image(case_dir / f"{case_name}_{name}.nii.gz", arr, phantom.geometry)
    paths["seg"] = write_image(case_dir / f"{case_name}_seg.nii.gz", phantom.labels, phantom.geometry)
    paths["mask"] = write_image(case_dir / f"{case_name}_mask.nii.gz", phantom.brain_mask, phantom.geometry)
    info = {
        "description": "CGC Lesion Seg synthetic brain MRI phantom (not patient data)",
        "params": phantom.params,
        "snr": phantom.snr,
        "snr_definition": "mean white-matter signal / sigma of the complex Gaussian noise (Rician magnitude)",
        "noise_sigma": phantom.noise_sigma,
        "tissue_intensities": TISSUE_INTENSITIES,
        "lesion_labels": {str(k): v for k, v in LESION_LABELS.items()},
        "lesion_centers_zyx": [list(c) for c in phantom.lesion_centers_zyx],
        "geometry": phantom.geometry.to_dict(),
    }
    info_path = case_dir / f"{case_name}_phantom.json"
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    paths["info"] = info_path
    paths["case_dir"] = case_dir
    return paths


def make_cohort(folder: str | Path, n_cases: int, seed: int = 0, prefix: str = "phantom",
                **phantom_kwargs) -> list[Path]:
    """Write ``n_cases`` phantoms (seeds ``seed, seed+1, ...``) as ``folder/<prefix>_NNN/`` in BraTS
    layout; extra keyword arguments go to :func:`make_phantom`. Returns the case folders."""
    if n_cases < 1:
        raise ValueError(f"n_cases must be at least 1, got {n_cases}")
    out = []
    for i in range(int(n_cases)):
        ph = make_phantom(seed=int(seed) + i, **phantom_kwargs)
        out.append(save_phantom(ph, folder, f"{prefix}_{i:03d}")["case_dir"])
    return out
