"""``cgcseg split4d``: split a 4-D volume (channels stacked in one file) into one 3-D file per channel.

The Medical Segmentation Decathlon stores a case's channels in one 4-D NIfTI (BrainTumour:
FLAIR, T1w, T1gd, T2w — its dataset.json names the order under "modality"). The other commands read
one 3-D volume per --input, so split first and name each channel in the stored order:

  cgcseg split4d BRATS_001.nii.gz --names flair t1 t1ce t2 --output-dir case/
  cgcseg segment --input flair=case/BRATS_001_flair.nii.gz --input t1=case/BRATS_001_t1.nii.gz ...

Each output keeps the 3-D geometry (spacing, origin, direction) of the first three axes and gets a
JSON sidecar naming the source file and the channel index.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

DESCRIPTION = __doc__


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="PATH", help="4-D NIfTI, NRRD or MHA file (x, y, z, channel)")
    p.add_argument("--names", nargs="+", required=True, metavar="NAME",
                   help="one name per channel in the stored order (e.g. flair t1 t1ce t2 for the Decathlon's "
                        "BrainTumour task; see its dataset.json)")
    p.add_argument("--output-dir", required=True, metavar="DIR", help="folder for <stem>_<name>.nii.gz")


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def run(args: argparse.Namespace) -> int:
    import SimpleITK as sitk

    from ..image_io import Geometry, ImageIOError, check_nifti_complete, check_output_paths, write_image
    from ..inputs import parse_input_specs
    from ..sidecar import write_sidecar

    src = Path(args.path)
    if not src.is_file():
        raise FileNotFoundError(f"not found: {src}")
    names = [n.lower() for n in args.names]
    parse_input_specs([f"{n}=x" for n in names])  # same name rules as --input; duplicates refused
    check_nifti_complete(src)  # SimpleITK fills a truncated file's missing voxels with 0 without a word
    try:
        img = sitk.ReadImage(str(src))
    except RuntimeError as exc:
        raise ImageIOError(f"could not read {src} ({str(exc).strip().splitlines()[-1]})") from None
    if img.GetDimension() != 4:
        raise ValueError(f"{src} has {img.GetDimension()} dimensions; split4d takes a 4-D file")
    size = img.GetSize()
    if size[3] != len(names):
        raise ValueError(f"{src} holds {size[3]} channels but --names gives {len(names)} ({' '.join(names)})")
    out_dir = Path(args.output_dir)
    outputs = {f"channel {n}": out_dir / f"{_stem(src)}_{n}.nii.gz" for n in names}
    check_output_paths(outputs, [src])
    written = []
    for index, name in enumerate(names):
        vol = sitk.Extract(img, [size[0], size[1], size[2], 0], [0, 0, 0, index])
        path = outputs[f"channel {name}"]
        write_image(path, sitk.GetArrayFromImage(vol), Geometry.from_sitk(vol))
        write_sidecar(path, kind="channel_of_4d", inputs={"4d": str(src)}, channel_index=index, channel_name=name)
        written.append(path)
    print(f"wrote {len(written)} channels: " + " ".join(f"--input {n}={p}" for n, p in zip(names, written)),
          file=sys.stderr)
    return 0
