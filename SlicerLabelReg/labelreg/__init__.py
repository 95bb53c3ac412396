"""LabelReg: label-driven weakly-supervised MR -> TRUS registration (Hu et al. 2018).

A pure library (torch, numpy, SimpleITK; never Slicer) shared by the Slicer module, the
command line and the training tools.
"""
__version__ = "0.1.0"
