"""A PNG overview of a segmentation: a few axial slices with each mask drawn as a coloured contour.

Pillow only (no matplotlib). The volume is shown in the **radiological convention**: the patient's
right on the image's left, anterior at the top, axial slices ordered from inferior to superior; the
image states this in its header. Orientation is taken from the geometry: the array axes are
permuted/flipped to the nearest R-L / A-P / I-S axes, so an image stored with any axis-aligned
direction (RAS- or LPS-ordered, sagittal or coronal acquisitions) comes out the same way. Pixels are
square in millimetres: anisotropic spacing is resampled for display, never distorted.

Slices are chosen through the lesion: through the ``"reference"`` mask when it has voxels, else
through the union of the given masks, at evenly spaced quantiles of the masked voxels along the
inferior-superior axis; with no mask voxels at all, evenly through the non-zero extent of the image.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

from .image_io import Geometry, atomic_write

#: Default contour colours by mask name (RGB); other names take :data:`FALLBACK_COLORS` in order.
NAMED_COLORS: dict[str, tuple[int, int, int]] = {
    "reference": (40, 220, 40),      # green: ground truth
    "cgc": (255, 48, 48),            # red: the network's segmentation
    "gmm": (255, 200, 0),            # amber: the GMM stage
    "segmentation": (255, 48, 48),
}
FALLBACK_COLORS = ((0, 200, 255), (255, 0, 255), (255, 128, 0), (128, 128, 255), (0, 255, 160))

# Layout constants (pixels); the image size follows from them (see :func:`overview_size`).
PAD_PX = 8
HEADER_PX = 44
CAPTION_PX = 18
LEGEND_PX = 26
MIN_WIDTH_PX = 640

CONVENTION = "Radiological convention: patient's right on image left, anterior at top"


@dataclass
class OverviewInfo:
    """What :func:`write_overview` drew.

    ``slices``: index of each shown slice along the array axis nearest to inferior-superior.
    ``panels``: ``(left, top, width, height)`` of each slice image in the PNG. ``display_axes``:
    numpy axes of the input that map to (I→S, A→P, R→L) display axes; ``flips``: whether each was
    reversed. ``colors``: mask name → RGB used.
    """

    path: Path
    size: tuple[int, int]
    slices: list[int]
    panels: list[tuple[int, int, int, int]]
    display_axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    colors: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    convention: str = CONVENTION
    #: Per mask: contour pixels drawn (all panels) and how many of them another contour covers.
    contour_px: dict[str, int] = field(default_factory=dict)
    overdrawn_px: dict[str, int] = field(default_factory=dict)


def _font(size: int):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def display_orientation(geometry: Geometry) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """Numpy axes of a ``(z, y, x)`` array that run closest to (S, P, L) in LPS, and whether each
    must be flipped so the displayed axis runs inferior→superior, anterior→posterior (top→bottom)
    and patient right→left (image left→right, radiological)."""
    d = geometry.direction_matrix            # columns: index axes i, j, k (= numpy axes 2, 1, 0)
    # For each world axis (L=0, P=1, S=2) the index axis with the largest |cosine|.
    used: list[int] = []
    axes: list[int] = []
    flips: list[bool] = []
    for world in (2, 1, 0):                  # S, P, L
        order = np.argsort(-np.abs(d[world, :]))
        idx = next(int(i) for i in order if int(i) not in used)
        used.append(idx)
        axes.append(2 - idx)                 # index axis i ↔ numpy axis 2
        flips.append(bool(d[world, idx] < 0))
    return (axes[0], axes[1], axes[2]), (flips[0], flips[1], flips[2])


def _to_display(volume: np.ndarray, axes: Sequence[int], flips: Sequence[bool]) -> np.ndarray:
    out = np.transpose(volume, axes)
    for ax, flip in enumerate(flips):
        if flip:
            out = np.flip(out, axis=ax)
    return out


def choose_slices(n_slices: int, focus_zyx: np.ndarray | None, background_zyx: np.ndarray) -> list[int]:
    """Slice indices (axis 0 of display-ordered arrays) through ``focus`` if it has voxels, else even."""
    depth = background_zyx.shape[0]
    n = max(1, min(int(n_slices), depth))
    if focus_zyx is not None and focus_zyx.any():
        counts = focus_zyx.reshape(depth, -1).sum(axis=1)
        z = np.repeat(np.arange(depth), counts)
        chosen = sorted({int(z[min(len(z) - 1, int((i + 0.5) / n * len(z)))]) for i in range(n)})
        # Thin lesions: top up with the slices holding the most lesion, then the nearest ones.
        for extra in np.argsort(-counts, kind="stable"):
            if len(chosen) >= n or counts[extra] == 0:
                break
            if int(extra) not in chosen:
                chosen.append(int(extra))
        centre = int(np.argmax(counts))
        k = 1
        while len(chosen) < n and k < depth:
            for cand in (centre - k, centre + k):
                if 0 <= cand < depth and cand not in chosen and len(chosen) < n:
                    chosen.append(cand)
            k += 1
        return sorted(chosen)
    nonzero = np.nonzero(background_zyx.reshape(depth, -1).any(axis=1))[0]
    lo, hi = (int(nonzero[0]), int(nonzero[-1])) if len(nonzero) else (0, depth - 1)
    return sorted({int(round(lo + (hi - lo) * (i + 1) / (n + 1))) for i in range(n)})


def panel_size(shape_rows_cols: tuple[int, int], spacing_rows_cols: tuple[float, float],
               panel_px: int) -> tuple[int, int]:
    """(width, height) in pixels of one slice with square millimetre pixels; the longer side is
    ``panel_px``."""
    h_mm = shape_rows_cols[0] * spacing_rows_cols[0]
    w_mm = shape_rows_cols[1] * spacing_rows_cols[1]
    scale = panel_px / max(h_mm, w_mm)
    return max(1, int(round(w_mm * scale))), max(1, int(round(h_mm * scale)))


def overview_size(n_panels: int, panel_wh: tuple[int, int]) -> tuple[int, int]:
    """PNG (width, height) for ``n_panels`` slices of ``panel_wh`` pixels in one row."""
    w = max(PAD_PX + n_panels * (panel_wh[0] + PAD_PX), MIN_WIDTH_PX)
    h = HEADER_PX + PAD_PX + panel_wh[1] + CAPTION_PX + LEGEND_PX + PAD_PX
    return w, h


def _window(background: np.ndarray, percentiles: tuple[float, float]) -> tuple[float, float]:
    values = background[background != 0]
    if values.size == 0:
        values = background.ravel()
    lo, hi = np.percentile(values.astype(np.float64), percentiles)
    if hi <= lo:
        hi = lo + 1.0
    return float(lo), float(hi)


def _border(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels of ``mask`` within ``width`` pixels of its outside (in-plane, 4-connected)."""
    if not mask.any():
        return mask
    inner = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(2, 1),
                                   iterations=width, border_value=0)
    return mask & ~inner


def write_overview(png_path: str | os.PathLike, background_zyx: np.ndarray, geometry: Geometry,
                   masks: Mapping[str, np.ndarray] | None = None, n_slices: int = 4,
                   title: str | None = None, colors: Mapping[str, tuple[int, int, int]] | None = None,
                   panel_px: int = 320, line_width: int = 2, window_percentiles: tuple[float, float] = (0.5, 99.5),
                   background_name: str = "image", emphasize: str | None = None) -> OverviewInfo:
    """Write a PNG with ``n_slices`` axial slices of ``background_zyx`` and each mask's contour.

    ``background_zyx``: the reference channel, ``(z, y, x)``. ``geometry``: its grid (orientation
    and spacing set the display). ``masks``: name → ``(z, y, x)`` array (non-zero = inside), drawn in
    the given order, later ones on top; an empty mask is listed in the legend as empty.
    ``emphasize``: the name of the mask that is the result: drawn last (nothing covers it) and one
    pixel thicker. ``panel_px``: longer side of each slice image. ``line_width``: contour width in pixels.
    The file is written atomically. Returns an :class:`OverviewInfo`.
    """
    from PIL import Image as PILImage
    from PIL import ImageDraw

    background = np.asarray(background_zyx)
    if background.ndim != 3:
        raise ValueError(f"the background must be a 3-D (z, y, x) array, got shape {background.shape}")
    if tuple(background.shape) != tuple(geometry.shape_zyx):
        raise ValueError(f"background shape {background.shape} does not match the geometry {geometry.shape_zyx}")
    if panel_px < 16 or line_width < 1:
        raise ValueError(f"panel_px must be >= 16 and line_width >= 1, got {panel_px}, {line_width}")
    masks = dict(masks or {})
    if emphasize is not None:
        if emphasize not in masks:
            raise ValueError(f"emphasize={emphasize!r} is not one of the masks ({', '.join(masks) or 'none'})")
        masks[emphasize] = masks.pop(emphasize)  # drawn last
    for name, m in masks.items():
        if np.asarray(m).shape != background.shape:
            raise ValueError(f"mask {name!r} has shape {np.asarray(m).shape} but the image has {background.shape}")

    palette: dict[str, tuple[int, int, int]] = {}
    fallback = iter(FALLBACK_COLORS * 4)
    for name in masks:
        given = (colors or {}).get(name)
        palette[name] = tuple(given) if given else NAMED_COLORS.get(name.lower()) or next(fallback)

    axes, flips = display_orientation(geometry)
    spacing_zyx = (geometry.spacing[2], geometry.spacing[1], geometry.spacing[0])
    disp_spacing = tuple(spacing_zyx[a] for a in axes)
    bg = _to_display(background.astype(np.float32), axes, flips)
    disp_masks = {k: _to_display(np.asarray(v) != 0, axes, flips) for k, v in masks.items()}
    if "reference" in disp_masks and disp_masks["reference"].any():
        focus = disp_masks["reference"]
    elif disp_masks:
        focus = np.logical_or.reduce(list(disp_masks.values()))
    else:
        focus = None
    slices = choose_slices(n_slices, focus, bg)
    pw, ph = panel_size(bg.shape[1:], disp_spacing[1:], panel_px)
    width, height = overview_size(len(slices), (pw, ph))

    canvas = PILImage.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    font, small = _font(14), _font(12)
    head = title or f"CGC Lesion Seg overview: {background_name}"
    draw.text((PAD_PX, 4), head, fill=(255, 255, 255), font=font)
    draw.text((PAD_PX, 24), f"{CONVENTION}; slices inferior to superior. Research use only.",
              fill=(190, 190, 190), font=small)

    lo, hi = _window(bg, window_percentiles)
    panels: list[tuple[int, int, int, int]] = []
    contour_px: dict[str, int] = {}
    overdrawn_px: dict[str, int] = {}
    drawn: dict[str, list] = {}
    top = HEADER_PX + PAD_PX
    # Physical position of each slice along I-S (mm from the first voxel's plane) for captions.
    for i, s in enumerate(slices):
        left = PAD_PX + i * (pw + PAD_PX)
        gray = np.clip((bg[s] - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)
        tile = PILImage.fromarray(gray).resize((pw, ph), PILImage.BILINEAR).convert("RGB")
        rgb = np.asarray(tile).copy()
        owner = np.full((ph, pw), -1, np.int16)
        for k, (name, m) in enumerate(disp_masks.items()):
            sl = m[s]
            if not sl.any():
                continue
            up = np.asarray(PILImage.fromarray(sl.astype(np.uint8) * 255).resize((pw, ph), PILImage.NEAREST)) > 127
            border = _border(up, line_width + (1 if name == emphasize else 0))
            rgb[border] = palette[name]
            owner[border] = k
            contour_px[name] = contour_px.get(name, 0) + int(border.sum())
            drawn[name] = drawn.get(name, []) + [(i, border)]
        for k, name in enumerate(disp_masks):
            for panel, border in drawn.get(name, []):
                if panel == i:
                    overdrawn_px[name] = overdrawn_px.get(name, 0) + int((border & (owner != k)).sum())
        canvas.paste(PILImage.fromarray(rgb), (left, top))
        panels.append((left, top, pw, ph))
        draw.text((left + 3, top + 2), "R", fill=(255, 255, 120), font=small)
        draw.text((left + pw - 11, top + 2), "L", fill=(255, 255, 120), font=small)
        orig_index = s if not flips[0] else bg.shape[0] - 1 - s
        draw.text((left, top + ph + 2), f"slice {orig_index} ({s * disp_spacing[0]:.0f} mm from bottom)",
                  fill=(220, 220, 220), font=small)

    # Legend: colour swatch, name and volume of each mask.
    x = PAD_PX
    y = top + ph + CAPTION_PX + 4
    voxel_ml = float(np.prod(geometry.spacing)) / 1000.0
    for name, m in masks.items():
        n = int(np.count_nonzero(m))
        draw.rectangle([x, y + 3, x + 14, y + 15], fill=palette[name])
        label = f"{name}: {n * voxel_ml:.1f} ml" if n else f"{name}: empty"
        draw.text((x + 20, y + 1), label, fill=(235, 235, 235), font=small)
        x += 28 + int(draw.textlength(label, font=small))

    path = Path(png_path)
    with atomic_write(path, "wb") as fh:
        canvas.save(fh, format="PNG")
    orig_slices = [s if not flips[0] else bg.shape[0] - 1 - s for s in slices]
    return OverviewInfo(path=path, size=(width, height), slices=orig_slices, panels=panels,
                        display_axes=axes, flips=flips, colors=palette,
                        contour_px={k: contour_px.get(k, 0) for k in masks},
                        overdrawn_px={k: overdrawn_px.get(k, 0) for k in masks})
