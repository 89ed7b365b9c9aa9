"""The three morphological classes and their integer labels, as every stage's files store them.

Kept apart from :mod:`.morphology` (which measures them, with SciPy and statmorph's recipes) so that
the later stages, which only read labels, do not load what measuring needs.
"""

SPIRAL, ELLIPTICAL, MERGER = 0, 1, 2
CLASS_NAMES = ("spiral", "elliptical", "merger")
UNCLASSIFIED = -1  # lotz_class of a non-finite (degenerate) measurement
