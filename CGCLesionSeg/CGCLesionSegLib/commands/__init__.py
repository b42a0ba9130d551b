"""Sub-commands of ``cgcseg``; shared argument helpers keep one vocabulary everywhere."""
from __future__ import annotations

import argparse


def add_input_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--input", dest="inputs", action="append", metavar="[NAME=]PATH", required=required,
                   default=None, help="an input channel, repeatable; NAME is a modality (flair, t1, t1ce, "
                   "t2, ct or any word). Unnamed inputs are taken in order; the first is the reference channel.")
    p.add_argument("--mask", metavar="PATH", help="brain mask on the same grid (non-zero = brain). Needed for "
                   "MRI with skull; skull-stripped MRI uses its non-zero voxels.")


def add_device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto takes CUDA when available (default: auto)")


def add_progress_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--progress", choices=("bar", "json", "none"), default="bar",
                   help="bar: a progress bar on stderr; json: one JSON object per line on stdout (default: bar)")


#: Output rules of the CGC stage: "auto" and the names of ``inference.OUTPUT_PRESETS`` (kept here so
#: building the parsers, and the Slicer module, do not import torch).
OUTPUT_RULES = ("auto", "none", "single-lesion", "single-lesion-recommended")


def add_output_rule_arg(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--postprocess", choices=OUTPUT_RULES, default="auto", help=help)
