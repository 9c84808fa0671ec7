"""Which media a model reads and a stream gives: checked before any training, and used to
train a modality's components only in the stages whose data carry that modality."""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import ConcatDataset, Dataset

from contmm.model.components import ComponentModel
from contmm.model.pretrained import FAMILIES
from contmm.model.tokenizer import PLACEHOLDERS


def sample_texts(dataset: Dataset) -> Iterator[dict]:
    """The dataset's samples without their media where it can say so (``text(i)``), through
    concatenations (a stage with replayed samples); otherwise the samples themselves."""
    if isinstance(dataset, ConcatDataset):
        for part in dataset.datasets:
            yield from sample_texts(part)
        return
    read = dataset.text if hasattr(dataset, "text") else dataset.__getitem__
    for index in range(len(dataset)):
        yield read(index)


def sample_modalities(sample: dict) -> set[str]:
    """The media a sample carries, read from the placeholders in its question."""
    return {modality for modality, placeholder in PLACEHOLDERS.items() if placeholder in sample["question"]}


def modalities_in(dataset: Dataset) -> set[str]:
    return set().union(*(sample_modalities(sample) for sample in sample_texts(dataset)))


def stream_modalities(stream) -> set[str]:
    """The media of every task's samples (training and test) and of the pre-training task."""
    tasks = [*stream.tasks, *([stream.pretrain_task] if stream.pretrain_task else [])]
    return set().union(
        *(modalities_in(getattr(task, split)) for task in tasks for split in ("train", "test"))
    )


def check_modalities(tasks: list, model: ComponentModel) -> list[list[str]]:
    """Refuse, before the first step, a sample whose image, clip or sound the model cannot
    read (a clip given to an image-only family, a sound to a model without an audio
    encoder), naming the task, the sample and the families that read it. A sample's question
    holds a placeholder per medium, so the check reads text only, never a file. Returns each
    task's media (of its training and test samples), in the tasks' order."""
    found = []
    for task in tasks:
        media = set()
        for split in ("train", "test"):
            for sample in sample_texts(getattr(task, split)):
                carried = sample_modalities(sample)
                media |= carried
                for modality in carried - set(model.modalities):
                    raise ValueError(_refusal(task.name, split, sample["id"], modality, model))
        found.append(sorted(media))
    return found


def freeze_absent_modalities(model: ComponentModel, dataset: Dataset) -> list[str]:
    """Freeze the components that read only media the stage's data do not carry (an audio
    encoder in an image stage): they get no gradient there, which DDP refuses, and weight
    decay would wear them down. A modality first met at a stage has its components trained
    from there (modality-incremental tuning). Returns the components frozen here."""
    present = modalities_in(dataset)
    frozen = []
    for name, readers in model.component_modalities().items():
        if readers & present:
            continue
        trainable = [p for p in model.component_tensors(name) if getattr(p, "requires_grad", False)]
        for parameter in trainable:
            parameter.requires_grad_(False)
        frozen += [name] if trainable else []
    return frozen


def _refusal(task: str, split: str, sample_id: object, modality: str, model: ComponentModel) -> str:
    pretrained = getattr(model.cfg, "pretrained", None)
    which = (
        f"the {model.hf.config.model_type} checkpoint {pretrained}"
        if pretrained
        else f"the assembled model (give it model.encoders.{modality})"
    )
    readers = [name for name, family in FAMILIES.items() if modality in family.modalities]
    return (
        f"task {task!r} {split} sample {sample_id!r} reads {modality}, which {which} does not read "
        f"(it reads {', '.join(model.modalities)}); model.pretrained families that read {modality}: "
        f"{', '.join(readers)}"
    )
