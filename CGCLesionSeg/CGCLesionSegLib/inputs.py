"""Parsing of ``--input [NAME=]PATH`` and matching of named inputs to a model's modalities."""
from __future__ import annotations

import re
from typing import Sequence

KNOWN_MODALITIES = ("flair", "t1", "t1ce", "t2", "ct")
DEFAULT_ORDER = ("flair", "t1", "t1ce", "t2")

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]*$")


def parse_input_specs(specs: Sequence[str]) -> list[tuple[str | None, str]]:
    """``["flair=a.nii.gz", "b.nii.gz"]`` → ``[("flair", "a.nii.gz"), (None, "b.nii.gz")]``.

    A NAME is a word before the first ``=``; a path that itself contains ``=`` keeps working when
    the part before it is not a plain word. Names are lower-cased.
    """
    out: list[tuple[str | None, str]] = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if sep and _NAME.match(name) and path:
            out.append((name.lower(), path))
        else:
            out.append((None, spec))
    names = [n for n, _ in out if n is not None]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"input name(s) given twice: {', '.join(dup)}")
    return out


def order_inputs(specs: Sequence[tuple[str | None, str]], expected: Sequence[str]) -> list[str]:
    """Return paths in the order of ``expected`` modalities.

    Named inputs are matched by name; unnamed ones must then be exactly as many as ``expected``
    and are taken in the given order. Any mismatch raises ``ValueError`` listing what is expected.
    """
    expected = [e.lower() for e in expected]
    named = {n: p for n, p in specs if n is not None}
    unnamed = [p for n, p in specs if n is None]
    want = " ".join(f"{e}=PATH" for e in expected)
    if named and unnamed:
        raise ValueError(f"mix of named and unnamed inputs; name them all: {want}")
    if unnamed:
        if len(unnamed) != len(expected):
            raise ValueError(f"got {len(unnamed)} input(s) but {len(expected)} are expected, in this order: "
                             f"{', '.join(expected)} (give them as {want})")
        return list(unnamed)
    missing = [e for e in expected if e not in named]
    extra = [n for n in named if n not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if extra:
            parts.append(f"unexpected {', '.join(extra)}")
        raise ValueError(f"inputs do not match the expected modalities ({'; '.join(parts)}); "
                         f"expected: {want}")
    return [named[e] for e in expected]


def names_in_order(names: Sequence[str | None], expected: Sequence[str] | None = None) -> list[str | None]:
    """The modality each input is used as: its own name when named; unnamed inputs take ``expected``
    (the model's modalities) in order when the counts match, else the documented order
    (:data:`DEFAULT_ORDER`). Inputs that cannot be placed stay None (the channel check skips them)."""
    names = [n.lower() if n else None for n in names]
    if any(n is not None for n in names):
        return names
    if expected is not None and len(expected) == len(names):
        return [e.lower() for e in expected]
    if expected is None and len(names) <= len(DEFAULT_ORDER):
        return list(DEFAULT_ORDER[:len(names)])
    return names
