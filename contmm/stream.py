"""Tasks and task streams: what a continual run is trained and evaluated on.

A sample is a dict in the LLaVA / CoIN shape: ``{"id", "image", "question", "answer"}``,
where ``image`` is a PIL image (or a path a stream resolves) and ``question`` holds the
``<image>`` placeholder. A training sample of a multi-turn conversation also has
``"followups"``: its later turns, ``[{"question", "answer"}, ...]`` (no image placeholder),
trained on after the first answer. A :class:`TaskStream` is an ordered list of :class:`Task`;
the continual loop iterates the tasks themselves. ``TaskStream.benchmark()`` gives the same
stream as an Avalanche benchmark (one experience per task, with its task label), for code
that reads Avalanche's experiences.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from torch.utils.data import Dataset

from contmm.scoring.images import check_scorer


@dataclass
class Task:
    """One instruction-tuning task: its name, train and test samples and its scorer."""

    name: str
    train: Dataset
    test: Dataset
    scorer: str = "exact_match"

    def __post_init__(self) -> None:
        try:
            check_scorer(self.scorer)
        except ValueError as error:
            raise ValueError(f"task {self.name!r}: {error}") from None
        for split in ("train", "test"):
            if len(getattr(self, split)) == 0:
                raise ValueError(f"task {self.name!r} has no {split} samples")


def check_task_names(names: list[str], stream: str) -> None:
    """Refuse a stream with no tasks (a run would train nothing and exit with an empty
    matrix) or with two tasks of one name (results, predictions and plots go by name)."""
    if not names:
        raise ValueError(f"{stream}: the stream has no tasks; give at least one")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"{stream}: duplicate task name(s) {duplicates}; task names must be unique")


class TaskStream:
    """An ordered sequence of tasks, plus an optional pre-training (alignment) task.

    Subclasses build ``self.tasks`` (and ``self.pretrain_task``) in ``__init__``; the tasks
    are checked as they are set (:func:`check_task_names`), so every stream refuses an empty
    or ambiguous task list when it is built, before any model.
    """

    pretrain_task: Task | None = None

    @property
    def tasks(self) -> list[Task]:
        return self._tasks

    @tasks.setter
    def tasks(self, tasks: list[Task]) -> None:
        check_task_names([task.name for task in tasks], type(self).__name__)
        self._tasks = list(tasks)

    @property
    def task_names(self) -> list[str]:
        return [task.name for task in self.tasks]

    def texts(self) -> Iterator[str]:
        """Every question and answer of the stream, for building a word-level tokenizer."""
        for task in [*self.tasks, *([self.pretrain_task] if self.pretrain_task else [])]:
            for split in (task.train, task.test):
                for i in range(len(split)):
                    # A dataset may offer its text without loading the image (``text(i)``).
                    sample = split.text(i) if hasattr(split, "text") else split[i]
                    for turn in [sample, *sample.get("followups", [])]:
                        yield turn["question"]
                        yield turn["answer"]

    def benchmark(self):
        """The stream as an Avalanche benchmark: one experience per task, task label = index
        (contmm's loop does not use it)."""
        from avalanche.benchmarks import benchmark_from_datasets, with_task_labels
        from avalanche.benchmarks.utils import AvalancheDataset, DataAttribute
        from avalanche.benchmarks.utils.flat_data import ConstantSequence

        def labelled(dataset: Dataset, task_id: int) -> AvalancheDataset:
            labels = ConstantSequence(task_id, len(dataset))
            attribute = DataAttribute(labels, "targets_task_labels", use_in_getitem=False)
            return AvalancheDataset([dataset], data_attributes=[attribute])

        return with_task_labels(
            benchmark_from_datasets(
                train=[labelled(task.train, i) for i, task in enumerate(self.tasks)],
                test=[labelled(task.test, i) for i, task in enumerate(self.tasks)],
            )
        )
