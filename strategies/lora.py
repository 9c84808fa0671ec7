"""LoRA fine-tuning through the whole stream: one peft LoRA adapter on the frozen LLM,
tuned on every task in turn (Hu et al. 2021, arXiv 2106.09685; the field's "LoRA-FT"
baseline, CoIN's sequential LoRA, arXiv 2403.08350).

Nothing protects the earlier tasks: it is the parameter-efficient counterpart of naive
sequential tuning, the floor the LoRA-family methods are compared against. No task id is
needed at evaluation.
"""

from __future__ import annotations

from peft import PeftModel

from strategies.lora_per_task import LoRAPerTask

ADAPTER = "stream"


class LoRA(LoRAPerTask):
    """One LoRA adapter on the frozen LLM, tuned on every task (same settings as
    :class:`~strategies.lora_per_task.LoRAPerTask`: ``r``, ``alpha``, ``dropout``,
    ``target_modules``)."""

    def before_task(self, model, task_id) -> None:
        if not model.cfg.backbone.freeze:
            raise ValueError("LoRA needs `model.backbone.freeze: true`: the adapter is what the tasks tune")
        lm = model.backbone.lm
        if isinstance(lm, PeftModel) and ADAPTER in lm.peft_config:
            lm.set_adapter(ADAPTER)  # trainable again: the runner froze the backbone for the stage
        else:
            self._add(model, ADAPTER)

    @staticmethod
    def adapter_for(model, task_id: int) -> str | None:
        """The one adapter for every task; None (the base LLM) before the first task."""
        return ADAPTER if isinstance(model.backbone.lm, PeftModel) else None
