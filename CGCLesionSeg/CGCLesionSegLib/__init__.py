"""Slicer-free core of CGC Lesion Seg.

Never imports ``slicer``, ``qt``, ``ctk`` or ``vtk``: it runs in a plain Python environment, inside
Slicer's Python, and in training child processes alike. Arrays are ``(z, y, x)``; tensors are
``(B, C, Z, Y, X)``; sizes in user-facing text are written ``x × y × z`` as in the paper.
"""

__version__ = "0.1.0"
