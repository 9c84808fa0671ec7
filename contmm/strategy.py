"""The continual-strategy API: a few optional hooks the runner and the module call.

A strategy never touches the training loop, the logger or the filesystem. Strategies
compose: :class:`Strategies` calls every configured strategy in order, so
``[Replay, EWC]`` mixes memory into the data *and* adds a penalty to the loss.

Where each hook runs:

- ``setup``: once, before the first evaluation (row 0).
- ``before_task``: before stage ``task_id`` is fit, after the config's trainability is
  applied; add an adapter or a projector, change what is trainable.
- ``train_data``: the stage's training set, e.g. with replay memory mixed in.
- ``penalty``: inside every training step; a scalar added to the LM loss, or None. Under
  ``fsdp2`` the model's weights are shards there (see ``runs_sharded``); every other hook
  sees the whole model.
- ``after_task``: at the end of the stage's fit, on the training device, with the stage's
  training dataloader (a shard of it under DDP: all-reduce what you compute).
- ``eval_context``: around the evaluation of each batch of task ``task_id`` (adapter /
  projector routing); ``batch`` is that batch, for strategies that route per sample.
- ``evaluation_report``: after each evaluation, on every rank (all-reduce what you count);
  a JSON-able dict the runner stores per stage in ``results.json`` (e.g. routing accuracy).
- ``state_dict`` / ``load_state_dict``: what a resumed run needs (buffers, Fisher, the
  adapters' weights, ...), saved with each stage checkpoint (tensors, numbers, strings,
  lists and dicts only: it is loaded with ``torch.load(weights_only=True)``). On resume,
  ``contmm eval --run`` and ``contmm export``, ``load_state_dict`` runs after ``setup`` and
  before the model's weights are loaded, with the model, so it can rebuild structure
  (adapters, projectors) those weights need.

Every hook that acts on the model gets it, typed as :class:`~contmm.model.ComponentModel`:
the interface every model implements (the assembled one, a whole checkpoint, the sharded
copy ``penalty`` sees under ``fsdp2``), so a strategy keeps no model of its own. Whether
the model draws images is ``model.generates``.

A strategy written for the hooks' first form, ``state_dict(self)``,
``load_state_dict(self, state)`` and ``evaluation_report(self)``, still runs: it is called
without the model, with a warning.
"""

from __future__ import annotations

import inspect
import warnings
from collections import Counter
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset

if TYPE_CHECKING:
    from contmm.model import ComponentModel
    from contmm.stream import TaskStream


class Strategy:
    """Base class of continual strategies; every hook is optional (the default does nothing).

    ``once_per_run``: a strategy that keeps state about the run (a memory, adapters,
    projectors, the data it mixes in) is used once; listing it twice would apply it twice
    to the same data and model, which fails or means nothing. A strategy whose copies
    only add up (a penalty each) sets it to False and may be listed several times.
    """

    once_per_run = True
    # Under ``trainer.strategy: fsdp2`` ``penalty`` gets the model with its weights sharded
    # (torch DTensors; ``contmm.training.sharding.whole`` / ``local`` read them, as O-LoRA and EWC
    # do); a strategy whose penalty has not been made and checked to work on shards sets it
    # to False, and is refused there.
    runs_sharded = True
    # The media whose samples the strategy can handle; None: any. One that routes a sample by
    # its image's features (routed LoRA with image keys) names ("image",), and a stream with
    # clips or sounds is refused for it before the model is built.
    media: tuple[str, ...] | None = None

    def setup(self, model: ComponentModel, stream: TaskStream) -> None:
        pass

    def before_task(self, model: ComponentModel, task_id: int) -> None:
        pass

    def train_data(self, task_id: int, dataset: Dataset) -> Dataset:
        return dataset

    def penalty(self, model: ComponentModel, batch: dict, outputs: Any) -> torch.Tensor | None:
        return None

    def after_task(self, model: ComponentModel, task_id: int, dataloader: DataLoader) -> None:
        pass

    def eval_context(
        self, model: ComponentModel, task_id: int, batch: dict | None = None
    ) -> AbstractContextManager:
        return nullcontext()

    def evaluation_report(self, model: ComponentModel) -> dict:
        return {}

    def state_dict(self, model: ComponentModel) -> dict:
        return {}

    def load_state_dict(self, state: dict, model: ComponentModel) -> None:
        pass

    @property
    def name(self) -> str:
        return type(self).__name__


class Strategies(Strategy):
    """Several strategies run in the configured order."""

    def __init__(self, strategies: list[Strategy]) -> None:
        counts = Counter(type(s) for s in strategies)
        for kind, count in counts.items():
            if count > 1 and kind.once_per_run:
                raise ValueError(
                    f"strategies: {kind.__name__} is listed {count} times, but a run can use it once "
                    "(a second copy would act again on what the first did); list it once"
                )
        self.strategies = list(strategies)
        self.without_model = {id(s): first_form_hooks(s) for s in self.strategies}

    def _model_argument(self, strategy: Strategy, hook: str, model) -> tuple:
        return () if hook in self.without_model[id(strategy)] else (model,)

    def check_sharded(self, sharding: str) -> None:
        """Refuse, before the model is built, strategies that cannot run under ``sharding``."""
        if refused := [s.name for s in self.strategies if not s.runs_sharded]:
            raise ValueError(
                f"strategies {refused} cannot run under trainer.strategy {sharding!r}: their penalty "
                "reads whole weights, which are sharded there; use trainer.strategy ddp"
            )

    def check_media(self, media: set[str]) -> None:
        """Refuse, before the model is built, strategies that cannot handle the stream's media."""
        for s in self.strategies:
            if s.media is not None and (unread := sorted(media - set(s.media))):
                raise ValueError(
                    f"strategy {s.name} handles samples with {', '.join(s.media)} only (it routes each "
                    f"sample by its image's features), but the stream has samples with {', '.join(unread)}"
                )

    def setup(self, model, stream):
        for s in self.strategies:
            s.setup(model, stream)

    def before_task(self, model, task_id):
        for s in self.strategies:
            s.before_task(model, task_id)

    def train_data(self, task_id, dataset):
        for s in self.strategies:
            dataset = s.train_data(task_id, dataset)
        return dataset

    def penalty(self, model, batch, outputs):
        terms = [p for s in self.strategies if (p := s.penalty(model, batch, outputs)) is not None]
        return torch.stack(terms).sum() if terms else None

    def after_task(self, model, task_id, dataloader):
        for s in self.strategies:
            s.after_task(model, task_id, dataloader)

    @contextmanager
    def eval_context(self, model, task_id, batch=None):
        with ExitStack() as stack:
            for s in self.strategies:
                stack.enter_context(s.eval_context(model, task_id, batch))
            yield

    def evaluation_report(self, model):
        reports = {
            s.name: s.evaluation_report(*self._model_argument(s, "evaluation_report", model))
            for s in self.strategies
        }
        return {name: report for name, report in reports.items() if report}

    def state_dict(self, model):
        return {
            f"{i}:{s.name}": s.state_dict(*self._model_argument(s, "state_dict", model))
            for i, s in enumerate(self.strategies)
        }

    def load_state_dict(self, state, model):
        for i, s in enumerate(self.strategies):
            s.load_state_dict(state[f"{i}:{s.name}"], *self._model_argument(s, "load_state_dict", model))

    @property
    def name(self) -> str:
        return "+".join(s.name for s in self.strategies) or "none"


# The hooks that gained the model argument, and the number of parameters of their first form.
FIRST_FORMS = {"evaluation_report": 0, "state_dict": 0, "load_state_dict": 1}


def first_form_hooks(strategy: Strategy) -> set[str]:
    """The hooks ``strategy`` overrides in their first form, without the model; warned about
    once, at construction, and then called that way."""
    found = {
        hook
        for hook, count in FIRST_FORMS.items()
        if len(inspect.signature(getattr(strategy, hook)).parameters) == count
    }
    if found:
        warnings.warn(
            f"strategy {strategy.name}: {', '.join(sorted(found))} take(s) no model; contmm calls "
            "them without it. Add a `model` parameter (contmm.strategy's docstring): the hooks "
            "get the model, so a strategy need not keep it from setup",
            FutureWarning,
            stacklevel=3,
        )
    return found
