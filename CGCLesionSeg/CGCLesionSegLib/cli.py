"""``cgcseg``: one command with sub-commands ``gmm``, ``segment``, ``evaluate``, ``demo``, ``train``,
``ensemble``, ``split4d``.

Each sub-command lives in :mod:`CGCLesionSegLib.commands.<name>` with ``add_arguments(parser)`` and
``run(args) -> int``; heavy imports (torch) happen inside ``run`` so ``--help`` stays instant.
Errors the user can fix (bad files, mismatched grids, bad values) print one ``error:`` line and exit 2;
a cancel exits 130.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from . import __version__

SUBCOMMANDS = {
    "gmm": "GMM foreground probability map P (the method's first stage)",
    "segment": "segment one case or a cohort with a trained CGC model",
    "evaluate": "Dice / sensitivity of segmentations against reference labels",
    "demo": "run the whole pipeline on a generated phantom (no data needed)",
    "train": "train the CGC network on unlabelled cases (same as python -m CGCTraining)",
    "ensemble": "combine models of one recipe trained with different seeds into one model file",
    "split4d": "split a 4-D file of stacked channels (Medical Segmentation Decathlon) into 3-D files",
}

#: Appended to the error about a 4-D input.
SPLIT_HINT = ("; for channels stacked in one 4-D file (Medical Segmentation Decathlon layout), split it first: "
              "cgcseg split4d PATH --names flair t1 t1ce t2 --output-dir DIR (names in the stored order)")


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line usage errors: ``prog: error: MESSAGE (see prog --help)`` and exit 2,
    instead of the whole usage block before the message. Sub-command parsers inherit it."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="cgcseg",
        description="CGC Lesion Seg: unsupervised lesion segmentation. Measured on gliomas in BraTS MRI "
                    "(default output: held-out Dice 0.86, threshold chosen leave one case out; `cgcseg gmm` alone 0.83; "
                    "README 'Shipped models', docs/BENCHMARKS.md); MS lesions, CT haemorrhages and other "
                    "lesions are experimental (no benchmark shows they work). "
                    "Research use only, not for clinical diagnosis.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in SUBCOMMANDS.items():
        module = importlib.import_module(f"{__package__}.commands.{name}")
        p = sub.add_parser(name, help=help_text, description=getattr(module, "DESCRIPTION", help_text),
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           add_help=getattr(module, "ADD_HELP", True))
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's or a GUI's stop), raised where the command is: handled as an interrupt — every
    output is written under a temporary name and renamed only when complete, so none is half-written — and
    reported, with exit status 143 (128 + SIGTERM), instead of the process dying without a word."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
        return _main(argv)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _main(argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        # Everything after `train` (options first, --help included) belongs to CGCTraining's own parser;
        # argparse.REMAINDER would reject a leading option such as --help or --cases.
        args = argparse.Namespace(command="train", train_args=argv[1:],
                                  _run=importlib.import_module(f"{__package__}.commands.train").run)
    else:
        args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    from .image_io import GeometryMismatchError, ImageIOError
    from .progress import Cancelled
    try:
        return int(args._run(args) or 0)
    except (ImageIOError, GeometryMismatchError, ValueError, FileNotFoundError) as exc:
        hint = SPLIT_HINT if "has 4 dimensions" in str(exc) and args.command != "split4d" else ""
        print(f"cgcseg {args.command}: error: {str(exc).rstrip('.') if hint else exc}{hint}", file=sys.stderr)
        return 2
    except Cancelled as exc:  # before RuntimeError, of which it is a kind
        print(f"cgcseg {args.command}: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 130))  # 143 after SIGTERM (see adapt.StoppedBySignal)
    except (MemoryError, OSError, RuntimeError) as exc:
        oom = isinstance(exc, MemoryError) or "out of memory" in str(exc).lower()
        if isinstance(exc, RuntimeError) and not oom:
            raise
        detail = f" ({str(exc).splitlines()[0][:200]})" if str(exc) else ""
        hint = (". Use a smaller --window or --batch-size 1, or --device cpu if the GPU is too small; nothing was written"
                if oom else "")
        print(f"cgcseg {args.command}: error: {'out of memory' if oom else ''}{detail if oom else exc}{hint}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        how = "stopped by SIGTERM" if isinstance(exc, Terminated) else "interrupted"
        print(f"cgcseg {args.command}: {how}; nothing is half-written (outputs are renamed into place only when "
              "complete)", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130


if __name__ == "__main__":
    sys.exit(main())
