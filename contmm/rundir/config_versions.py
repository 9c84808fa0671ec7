"""A run's saved config read by a newer contmm: the parameters its classes gained since.

A config saved by an older contmm (or an older Lightning) lacks the parameters a stream,
strategy or logger class gained since (``SyntheticShapes(rounds)``, ``LLaVAStream(image_changes)``),
and the keys a config section (``eval``, ``data``, ``model``, ...) or the Trainer gained.
The old code ran with what the new parameter's default does (a new option keeps the old
behaviour by default), so the saved config is read with those defaults filled in: resuming
such a run with the same command goes on, and only a value other than the default counts as
a change. A class's defaults come from its signature, a section's from ``contmm fit``'s
parser (``defaults``).
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any


def with_new_defaults(saved: Any, current: Any, defaults: Any = None) -> Any:
    """``saved`` with each key that ``current`` has and ``saved`` lacks set to its default:
    an ``init_args`` key (for the same ``class_path``) to the class's default, any other to
    its value in ``defaults`` (the parser's defaults at the same place). None known: left out."""
    if isinstance(saved, list) and isinstance(current, list) and len(saved) == len(current):
        return [with_new_defaults(a, b) for a, b in zip(saved, current)]
    if not (isinstance(saved, dict) and isinstance(current, dict)):
        return saved
    defaults = defaults if isinstance(defaults, dict) else {}
    filled = {
        key: with_new_defaults(value, current.get(key), defaults.get(key)) for key, value in saved.items()
    }
    filled |= {key: defaults[key] for key in current.keys() - saved.keys() if key in defaults}
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
