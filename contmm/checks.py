"""Checks of numeric settings, made where a config is built so that a bad value stops a run
before any model is built, with a message naming the setting as the config spells it."""

from __future__ import annotations

# numpy accepts seeds 0 .. 2**32 - 1 (Lightning's seed_everything refuses the others).
MAX_SEED = 2**32 - 1


def check_at_least(setting: str, value: float, minimum: float) -> None:
    if value < minimum:
        raise ValueError(f"{setting} must be at least {minimum}, got {value}")


def check_positive(setting: str, value: float | None) -> None:
    """``value`` is above 0, or None (the setting is not given)."""
    if value is not None and not value > 0:
        raise ValueError(f"{setting} must be positive, got {value}")


def check_seed(seed: int, stages: int) -> None:
    """Stage i seeds with ``seed + i``, so the last stage must stay in numpy's range too:
    otherwise the run fails at its first stage, and again on every resume."""
    if not 0 <= seed <= MAX_SEED - stages:
        raise ValueError(
            f"seed must be in 0 .. {MAX_SEED - stages}, got {seed} (numpy's seeds end at 2**32-1 "
            f"and stage i seeds with seed + i, here up to seed + {stages})"
        )
