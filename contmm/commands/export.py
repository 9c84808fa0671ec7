"""`contmm export`: a fit run's tuned model in a form the ecosystem loads without contmm.

A whole checkpoint (``model.pretrained``) is written back as a transformers directory of
its own class with its processor (``AutoModelForMultimodalLM.from_pretrained`` loads it,
and ``AutoModelForImageTextToText`` an image family's). LoRA adapters on its LLM are merged into it when there is one; with one adapter per
task (LoRA-per-task), the directory holds the base model and ``adapters/<name>/``, one peft
adapter for the whole model each (``PeftModel.from_pretrained(base, DIR/adapters/<name>)``),
and ``manifest.json`` lists them with the stream's tasks.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model_state_dict
from safetensors.torch import save_file

from contmm.rundir.directory import atomic_write
from contmm.rundir.stage_source import read_stage
from contmm.training.runner import ContinualRun


def whole_model_adapter(lm: PeftModel, name: str, prefix: str) -> tuple[object, dict]:
    """Adapter ``name`` of the LLM ``lm`` re-addressed to the whole checkpoint, whose LLM sits
    at ``prefix``: its config targets the LLM's layers alone, its weights carry the prefix."""
    config = lm.peft_config[name]
    targets = config.target_modules
    inner = targets if isinstance(targets, str) else rf".*\.({'|'.join(map(re.escape, sorted(targets)))})"
    config = replace(config, target_modules=rf"{re.escape(prefix)}\.(?:{inner})", task_type=None)
    weights = {
        key.replace("base_model.model.", f"base_model.model.{prefix}.", 1): tensor.contiguous()
        for key, tensor in get_peft_model_state_dict(lm, adapter_name=name).items()
    }
    return config, weights


def export(run: ContinualRun, source: Path, stage: int | None, output: Path) -> dict:
    """Write ``source``'s stage checkpoint (default: the newest) of ``run``'s model to ``output``."""
    if not run.model.cfg.pretrained:
        raise ValueError(
            f"{source} assembles its model from components (model.encoder / input_projector / "
            "backbone): contmm export writes whole checkpoints (model.pretrained) only"
        )
    if output.exists() and any(output.iterdir()):
        raise ValueError(f"{output} is not empty: export into a new directory")
    checkpoint = read_stage(
        source, stage, run.config["dict"], run.model.tokenizer, run.config.get("defaults")
    )
    run.prepare(checkpoint, source)
    manifest = {"run": str(source), "stage": checkpoint.stage, "class": type(run.model.hf).__name__}
    lm = run.model.backbone.lm
    if isinstance(lm, PeftModel):
        names = list(lm.peft_config)
        prefix = run.model.family.language_model
        adapters = {name: whole_model_adapter(lm, name, prefix) for name in names}
        if len(names) == 1:
            lm.merge_and_unload()  # in place: the checkpoint's own layers get the update
            manifest["lora"] = f"adapter {names[0]} merged"
        else:
            lm.unload()  # the base model: its own layers, without the adapters
            for name, (config, weights) in adapters.items():
                config.save_pretrained(output / "adapters" / name)
                save_file(weights, output / "adapters" / name / "adapter_model.safetensors")
            # LoRA-per-task names the adapter of the stream's j-th task task_<j>.
            manifest.update(
                tasks=run.stream.task_names, adapters={name: f"adapters/{name}" for name in names}
            )
    if isinstance(run.model.hf.config.dtype, torch.dtype):
        run.model.hf.to(run.model.hf.config.dtype)  # trained components back to the stored dtype
    run.model.hf.save_pretrained(output)
    run.model.processor.save_pretrained(output)
    atomic_write(output / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return manifest
