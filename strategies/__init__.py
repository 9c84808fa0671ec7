"""Continual strategies: one file each, on the hook API of :mod:`contmm.strategy`.

Configs refer to them by import path (``class_path: strategies.naive.Naive``).
"""
