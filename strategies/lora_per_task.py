"""LoRA per task: one fresh peft LoRA adapter on the LLM backbone for each task.

Each task trains its own adapter on a frozen base LLM; earlier adapters stay frozen, so a
task evaluated with its own adapter keeps its score exactly (task-incremental: the task
id picks the adapter). Only ``model.backbone.lm`` is wrapped (a ``PeftModelForCausalLM``),
so peft's habit of freezing everything outside its adapters stays inside the backbone,
which the config must freeze anyway: the components the config trains (the input
projector, say) stay trainable, and they are shared by all tasks.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import replace

from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

from contmm.strategy import Strategy

LLM_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRAPerTask(Strategy):
    """A fresh LoRA adapter on the frozen LLM per task, picked by the task id at evaluation.

    Args:
        r: rank of every adapter.
        alpha: LoRA scaling numerator (the update is scaled by ``alpha / r``).
        dropout: dropout on the adapters' input during training.
        target_modules: the backbone's linears that get adapters: names matched as suffixes,
            or one regex matched against the full module name (peft's rules).
    """

    def __init__(
        self,
        r: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        target_modules: Sequence[str] | str = LLM_PROJECTIONS,
    ) -> None:
        targets = target_modules if isinstance(target_modules, str) else list(target_modules)
        # Standard LoRA init (B = 0): each task starts from the base LLM itself, not from the
        # previous task's adapter, so no task's training is shaped by another's.
        self.config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets)

    def before_task(self, model, task_id) -> None:
        if not model.cfg.backbone.freeze:
            raise ValueError(
                "LoRAPerTask needs `model.backbone.freeze: true`: a base LLM tuned on every task "
                "would change under the earlier tasks' adapters"
            )
        self._add(model, f"task_{task_id}")

    def _add(self, model, name: str) -> None:
        """Add adapter ``name``, make it the active one and the only trainable weights in the LM."""
        lm = model.backbone.lm
        if isinstance(lm, PeftModel):
            lm.add_adapter(name, self.config)
        else:
            # A causal LM (an assembled backbone) is wrapped as one; a whole checkpoint's
            # language model has no LM head of its own, and peft's causal-LM wrapper needs one.
            causal = hasattr(lm, "prepare_inputs_for_generation")
            config = replace(self.config, task_type="CAUSAL_LM" if causal else None)
            model.backbone.lm = lm = get_peft_model(lm, config, adapter_name=name)
        lm.set_adapter(name)  # requires_grad: True on this adapter, False on the other adapters

    @staticmethod
    def adapter_for(model, task_id: int) -> str | None:
        """The adapter task ``task_id`` is evaluated with: its own; for a task not tuned yet the
        most recent one (so R[i][j], j > i, and forward transfer measure the model as tuned so
        far, as for the other strategies); None, the plain base LLM, before any task."""
        lm = model.backbone.lm
        if not isinstance(lm, PeftModel):
            return None
        own = f"task_{task_id}"
        return own if own in lm.peft_config else list(lm.peft_config)[-1]

    @contextmanager
    def eval_context(self, model, task_id, batch=None):
        """Evaluate under the adapter :meth:`adapter_for` picks; then restore the active one."""
        name = self.adapter_for(model, task_id)
        if name is None:
            yield
            return
        lm = model.backbone.lm
        previous = lm.active_adapter
        lm.set_adapter(name)
        try:
            yield
        finally:
            lm.set_adapter(previous)  # also puts requires_grad back: on the active adapter only

    def state_dict(self, model) -> dict:
        lm = model.backbone.lm
        if not isinstance(lm, PeftModel):
            return {"adapters": {}}
        return {
            "adapters": {name: get_peft_model_state_dict(lm, adapter_name=name) for name in lm.peft_config}
        }

    def load_state_dict(self, state: dict, model) -> None:
        """Rebuild the saved adapters on ``model``, in task order."""
        for name, weights in state["adapters"].items():
            self._add(model, name)
            result = set_peft_model_state_dict(model.backbone.lm, weights, adapter_name=name)
            if result.unexpected_keys:
                raise ValueError(f"adapter {name}: unexpected weights {result.unexpected_keys[:3]}")
