"""Naive sequential fine-tuning: each task is tuned in turn, with nothing to stop forgetting.

The lower bound every continual strategy is compared with. It changes nothing: the
base :class:`~contmm.strategy.Strategy` hooks are all no-ops.
"""

from contmm.strategy import Strategy


class Naive(Strategy):
    """Plain sequential fine-tuning (the CoIN baseline)."""

    once_per_run = False  # it does nothing, so twice does nothing either
