"""A run's saved config read by a newer contmm: the parameters its classes gained since.

A config saved by an older contmm lacks the parameters a stream, strategy or logger class
gained since (``SyntheticShapes(rounds)``, ``LLaVAStream(image_changes)``). The old code ran
with what the new parameter's default does (a new option keeps the old behaviour by
default), so the saved config is read with those defaults filled in: resuming such a run
with the same command goes on, and only a value other than the default counts as a change.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any


def with_new_defaults(saved: Any, current: Any) -> Any:
    """``saved`` with each ``init_args`` key that ``current`` has and ``saved`` lacks, for the
    same ``class_path``, set to the class's default for it (none known: left out)."""
    if isinstance(saved, list) and isinstance(current, list) and len(saved) == len(current):
        return [with_new_defaults(a, b) for a, b in zip(saved, current)]
    if not (isinstance(saved, dict) and isinstance(current, dict)):
        return saved
    filled = {key: with_new_defaults(value, current.get(key)) for key, value in saved.items()}
    new_args = current.get("init_args")
    if (
        "class_path" in saved
        and saved["class_path"] == current.get("class_path")
        and isinstance(new_args, dict)
    ):
        init_args = dict(filled.get("init_args") or {})
        defaults = parameter_defaults(saved["class_path"])
        init_args |= {key: defaults[key] for key in new_args.keys() - init_args.keys() if key in defaults}
        filled["init_args"] = init_args
    return filled


def parameter_defaults(class_path: str) -> dict[str, Any]:
    """The defaults of the parameters of the class at ``class_path``; none if it does not import."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        parameters = inspect.signature(cls).parameters.values()
    except (ImportError, AttributeError, TypeError, ValueError):
        return {}
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}
