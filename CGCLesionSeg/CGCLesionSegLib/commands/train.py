"""``cgcseg train``: the same arguments as ``python -m CGCTraining``; everything is passed through."""
from __future__ import annotations

import argparse

DESCRIPTION = ("Train the CGC network on unlabelled cases. Takes exactly the arguments of "
               "`python -m CGCTraining` (run `cgcseg train --help` to see them).")
ADD_HELP = False  # --help is forwarded to CGCTraining's own parser


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("train_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from CGCTraining.__main__ import main as train_main
    return int(train_main(args.train_args) or 0)
