"""Pack the development cases small enough to travel to a GPU machine (the `device` tool's ``carry``
takes 64 MiB; the 11 tumour cases are ~98 MB as they are).

    python scripts/pack_cases.py                      # ../shared/data/{brats,unlabelled} -> device_data/

Measured (2026-11-30): the 11 tumour cases pack to 88.8 MiB (brats 57, unlabelled 33; cropping saves
little: the zeros outside the brain already compress well), and the limit also counts the working
tree (~9.4 MiB), so they travel in parts over several calls, e.g. ``carry`` = 4 case folders of
``device_data/brats``, then the other 3, then ``device_data/unlabelled`` (a warm device machine keeps
what earlier calls carried).
    # on the device:  python benchmarks/evaluate_cgc.py --protocol ... --data device_data --device cuda

Every file of a case is cropped to the box of voxels that are non-zero in any of its image channels
(skull-stripped MRI is zero outside the brain), plus ``--margin`` voxels, and written with the
stored pixel type and a shifted origin, so each kept voxel keeps its physical position. Nothing the
pipeline computes changes: the brain mask is the non-zero voxels, normalisation and the GMM read only
brain voxels, the network and every metric are restricted to the brain. The folder keeps the layout
(``<folder>/<case>/<case>_<name>.nii.gz``), so ``--data device_data`` replaces ``../shared/data``.
The data's licence stays with it: ``device_data/`` is git-ignored; never commit it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "CGCLesionSeg"))

#: File-name suffixes that are not image channels (not used for the crop box, cropped with it).
NON_CHANNELS = ("seg", "mask")


def crop_box(channels_zyx: list[np.ndarray], margin: int) -> tuple[slice, slice, slice]:
    """Box (z, y, x slices) of the voxels non-zero in any channel, grown by ``margin`` and clipped."""
    from CGCLesionSegLib.sliding_window import brain_bounding_box
    nonzero = np.zeros(channels_zyx[0].shape, dtype=bool)
    for c in channels_zyx:
        nonzero |= c != 0
    if not nonzero.any():
        raise ValueError("every channel is zero: nothing to keep")
    return brain_bounding_box(nonzero, margin)


def pack_case(case: Path, out: Path, margin: int) -> int:
    """Crop every ``.nii.gz`` of ``case`` into ``out``; returns the bytes written."""
    from CGCLesionSegLib.image_io import Geometry, read_image, write_image
    files = sorted(case.glob(f"{case.name}_*.nii.gz"))
    images = {f: read_image(f, dtype=None) for f in files}
    geom = images[files[0]].geometry
    for f, img in images.items():
        if img.geometry.shape_zyx != geom.shape_zyx:
            raise ValueError(f"{f}: its grid {img.geometry.shape_zyx} differs from {files[0].name}'s {geom.shape_zyx}")
    channels = [img.array_zyx for f, img in images.items() if f.name[len(case.name) + 1:-7] not in NON_CHANNELS]
    bz, by, bx = crop_box(channels, margin)
    shape = (bz.stop - bz.start, by.stop - by.start, bx.stop - bx.start)
    origin = tuple(float(v) for v in geom.index_to_lps((bx.start, by.start, bz.start)))
    cropped = Geometry(shape, geom.spacing, origin, geom.direction)
    out.mkdir(parents=True, exist_ok=True)
    total = 0
    for f, img in images.items():
        path = write_image(out / f.name, np.ascontiguousarray(img.array_zyx[bz, by, bx]), cropped)
        total += path.stat().st_size
    return total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--folders", nargs="+", default=["brats", "unlabelled"])
    ap.add_argument("--output", default=str(ROOT / "device_data"))
    ap.add_argument("--margin", type=int, default=2, help="voxels kept around the non-zero box (default 2)")
    ap.add_argument("--limit-mib", type=float, default=64.0, help="warn when the pack is larger (carry limit)")
    args = ap.parse_args(argv)
    data, out = Path(args.data), Path(args.output)
    if out.resolve() == data.resolve() or data.resolve() in out.resolve().parents:
        raise SystemExit(f"--output {out} lies inside --data {data}: choose another folder (the data stays untouched)")
    total = 0
    for folder in args.folders:
        cases = sorted(d for d in (data / folder).iterdir() if d.is_dir()) if (data / folder).is_dir() else []
        if not cases:
            raise SystemExit(f"no cases in {data / folder}")
        for case in cases:
            total += pack_case(case, out / folder / case.name, args.margin)
    mib = total / 2 ** 20
    print(f"wrote {out} ({mib:.1f} MiB)")
    if mib > args.limit_mib:
        print(f"warning: {mib:.1f} MiB is over the {args.limit_mib:g} MiB carry limit: carry the case folders in parts "
              "over several calls (a warm device machine keeps what earlier calls carried)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
