# ruff: noqa: N999  (Slicer names a module's helper package <Module>Lib)
"""Slicer adapters of the LabelReg module: MRML nodes <-> library volumes and transforms
(``nodes``), the engine cache and device fallbacks (``inference``), the background worker
(``worker``) and the PyTorch dependency check (``dependencies``)."""
