"""Writes one benchmark's section into docs/BENCHMARKS.md between its own markers, leaving others alone."""
from __future__ import annotations

import platform
import re
from datetime import date
from pathlib import Path

import os

BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"
HEADER = ("# Benchmarks\n\nEach section is written by the script named in it (`benchmarks/`); rerun it to refresh.\n"
          "Timings are medians of several runs on the machine stated in the section.\n")


def machine_line() -> str:
    threads = os.environ.get("OMP_NUM_THREADS", "default")
    gpu = ""
    try:  # name the GPU when one is present (the CUDA sections); torch is optional here
        import torch
        if torch.cuda.is_available():
            gpu = f", GPU {torch.cuda.get_device_name(0)} (torch {torch.__version__})"
    except ImportError:
        pass
    return (f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores{gpu}, "
            f"Python {platform.python_version()}, threads {threads}; measured {date.today().isoformat()}.")


def write_section(name: str, markdown: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace (or append) the block between ``<!-- BEGIN name -->`` and ``<!-- END name -->``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.exists() else HEADER
    block = f"<!-- BEGIN {name} -->\n{markdown.rstrip()}\n<!-- END {name} -->"
    pattern = re.compile(rf"<!-- BEGIN {re.escape(name)} -->.*?<!-- END {re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def publish(name: str, markdown: str, write: bool = True) -> None:
    """Print a benchmark's section and, unless ``write`` is false (``--no-write``), write it (:func:`write_section`)."""
    print(markdown)
    if write:
        write_section(name, markdown)
