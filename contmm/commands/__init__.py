"""The commands that use a run without training it: ``contmm eval`` and ``contmm export``."""
