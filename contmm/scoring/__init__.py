"""Scoring: answers (``text``) and drawings (``images``) scored per sample, the per-stage
evaluation reduced over ranks, the score matrix R, the continual metrics computed from it,
and the held-out tasks scored beside it."""
