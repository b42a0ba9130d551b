"""Slicer side of CGC Lesion Seg: the module's Widget, Logic, job controller and child-process runner.

One concept per file (as SlicerNNUnet splits its module):

- :mod:`.constants`: names, notice, modalities, segment colour and terminology shared by all files;
- :mod:`.runner`: launching a child process (hidden console on Windows), JSON progress lines, stop
  requests and process-tree kills; no Slicer, no Qt;
- :mod:`.jobs`: the job lifecycle (start, poll, cancel, stop with a bound, scene close, module
  cleanup, temporary folder removal on every path); no Qt, so it runs under slicer-core in CI;
- :mod:`.logic`: MRML nodes <-> arrays, GMM preview, child jobs, statistics, try-out phantom;
  uses ``slicer.mrmlScene`` and storage nodes, never ``slicer.app`` or dialogs;
- :mod:`.widget`: the Qt panel (the only file that imports ``qt``/``ctk`` and opens dialogs).

``CGCLesionSeg.py`` beside this folder keeps the module class, the parameter node and the self-test.
"""
