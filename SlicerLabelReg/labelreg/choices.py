"""The choices a registration takes and the verdicts it gets, defined once for the library, the
command line, the Slicer module and training (plain constants: the command line and Slicer read
them without importing torch)."""

#: "deformable": the alignment, the global net, then the local net; "affine": without the local
#: net; "local": the local net after the initial alignment only (evaluation of that stage)
MODES = ("affine", "deformable", "local")
#: the modes a user picks (command line, Slicer)
USER_MODES = ("deformable", "affine")
#: "auto" is CUDA when available, else the CPU
DEVICES = ("auto", "cpu", "cuda")
#: alignments from the image grids alone: the volume centres, or the headers' shared frame
GRID_ALIGNMENTS = ("centers", "headers")
#: initial alignments; "gland" is the learned one (models with gland localisers)
ALIGNMENTS = GRID_ALIGNMENTS + ("gland",)
#: how the "gland" alignment matches the two predicted glands: centroid to centroid, or the best
#: overlap of the two gland maps (:mod:`labelreg.overlap`)
GLAND_TRANSLATIONS = ("centroid", "overlap")
#: the verdicts of :mod:`labelreg.confidence`, and what each asks of the user
VERDICT_ADVICE = {"good": "good", "check": "check the overlay", "doubtful": "doubtful: check it carefully before use"}
