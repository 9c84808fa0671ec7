"""Whether a model reads every medium a stream gives it: checked before any training."""

from __future__ import annotations

from contmm.model.components import ComponentModel
from contmm.model.pretrained import FAMILIES
from contmm.model.tokenizer import PLACEHOLDERS


def check_modalities(tasks: list, model: ComponentModel) -> None:
    """Refuse, before the first step, a sample whose image, clip or sound the model cannot
    read (a clip given to an image-only family, a sound to the assembled model), naming the
    task, the sample and the families that read it. A sample's question holds a placeholder
    per medium, so the check reads text only, never a file."""
    for task in tasks:
        for split in ("train", "test"):
            dataset = getattr(task, split)
            text = dataset.text if hasattr(dataset, "text") else dataset.__getitem__
            for index in range(len(dataset)):
                sample = text(index)
                for modality, placeholder in PLACEHOLDERS.items():
                    if placeholder in sample["question"] and modality not in model.modalities:
                        raise ValueError(_refusal(task.name, split, sample["id"], modality, model))


def _refusal(task: str, split: str, sample_id: object, modality: str, model: ComponentModel) -> str:
    pretrained = getattr(model.cfg, "pretrained", None)
    which = (
        f"the {model.hf.config.model_type} checkpoint {pretrained}"
        if pretrained
        else "the assembled model (model.encoder; encoders for video and audio are not built yet)"
    )
    readers = [name for name, family in FAMILIES.items() if modality in family.modalities]
    return (
        f"task {task!r} {split} sample {sample_id!r} reads {modality}, which {which} does not read "
        f"(it reads {', '.join(model.modalities)}); model.pretrained families that read {modality}: "
        f"{', '.join(readers)}"
    )
