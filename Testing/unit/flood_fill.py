"""The slow, obviously-correct reference for connected components that several tests compare against."""
from __future__ import annotations

import numpy as np


def flood_components(mask) -> list[list[tuple[int, int, int]]]:
    """26-connected components of a 3-D bool array by an explicit flood fill: a list of voxel-index lists."""
    mask = np.asarray(mask, dtype=bool)
    seen = np.zeros(mask.shape, bool)
    comps = []
    for start in zip(*np.nonzero(mask)):
        start = tuple(int(v) for v in start)
        if seen[start]:
            continue
        stack, comp = [start], []
        seen[start] = True
        while stack:
            p = stack.pop()
            comp.append(p)
            for d in np.ndindex(3, 3, 3):
                q = tuple(a + b - 1 for a, b in zip(p, d))
                if all(0 <= q[i] < mask.shape[i] for i in range(3)) and mask[q] and not seen[q]:
                    seen[q] = True
                    stack.append(q)
        comps.append(comp)
    return comps
