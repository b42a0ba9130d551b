"""`cgcseg gmm` (being implemented)."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError("cgcseg gmm is not implemented yet")
