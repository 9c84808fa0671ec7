"""A synthetic visual-question stream: coloured shapes rendered with PIL from a seed.

Every image is a small canvas split into four quadrants; each object sits in its own
quadrant. The instruction tasks ask about one attribute each, with their own question
templates and answer words, so that sequential tuning really forgets: a model tuned on a
later task answers an earlier task's question with the later task's vocabulary. The
captioning task describes the whole object and serves MM pre-training (alignment).

The generation tasks turn it round: an instruction ("draw a red shape .") in, an image out,
scored by a pixel scorer (``contmm/scoring/images.py``) on the colour or quadrant drawn. Their
samples carry the rendered scene as ``target`` and a ``caption`` for the generator's text
encoder; with them in the stream, pre-training also draws whole scenes.

Nothing is stored on disk: scenes are drawn from the seed at construction (cheap) and the
images are rendered when a sample is read.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw
from torch.utils.data import ConcatDataset, Dataset

from contmm.scoring.images import BACKGROUND, PALETTE, QUADRANTS
from contmm.stream import Task, TaskStream

COLOURS = PALETTE
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
NUMBERS = ("one", "two", "three", "four")

QUESTIONS = {
    "colour": (
        "what colour is the shape ?",
        "which colour does the object have ?",
        "name the colour of the object .",
    ),
    "shape": (
        "what shape is in the image ?",
        "which kind of shape is drawn ?",
        "name the shape you see .",
    ),
    "count": (
        "how many shapes are there ?",
        "count the objects in the image .",
        "what is the number of shapes ?",
    ),
    "position": (
        "where is the shape ?",
        "in which corner is the object ?",
        "tell the position of the shape .",
    ),
    "caption": ("describe the image .", "write a short caption ."),
}
# Generation tasks: an instruction in, an image out, scored on the image by a pixel scorer.
INSTRUCTIONS = {
    "draw_colour": (
        "draw a {colour} shape .",
        "paint something {colour} .",
        "make a picture of a {colour} object .",
    ),
    "draw_position": (
        "draw a shape in the {quadrant} .",
        "put an object in the {quadrant} corner .",
        "paint something in the {quadrant} .",
    ),
    "draw": (
        "draw a {colour} {shape} in the {quadrant} .",
        "make a picture of a {colour} {shape} in the {quadrant} .",
    ),
}
# What the generator's text encoder reads for each (the tiny generator was pre-trained on these).
CAPTIONS = {
    "draw_colour": "a {colour} shape",
    "draw_position": "a shape in the {quadrant}",
    "draw": "a {colour} {shape} in the {quadrant}",
}
GENERATION_SCORERS = {"draw_colour": "colour_match", "draw_position": "quadrant_match"}
UNDERSTANDING = ("colour", "shape", "count", "position")
TASKS = (*UNDERSTANDING, *GENERATION_SCORERS)


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    quadrant: int


def _draw(draw: ImageDraw.ImageDraw, obj: Obj, cell: int, rng: random.Random) -> None:
    """Draw one object inside its quadrant, with a little jitter in size and place."""
    margin = max(1, cell // 8)
    size = rng.randint(cell * 5 // 8, cell - 2 * margin)
    x0 = (obj.quadrant % 2) * cell + rng.randint(margin, cell - size - margin + 1) - 1
    y0 = (obj.quadrant // 2) * cell + rng.randint(margin, cell - size - margin + 1) - 1
    x1, y1 = x0 + size, y0 + size
    fill = COLOURS[obj.colour]
    if obj.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif obj.shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif obj.shape == "triangle":
        draw.polygon(((x0 + x1) / 2, y0, x1, y1, x0, y1), fill=fill)
    elif obj.shape == "diamond":
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        draw.polygon((cx, y0, x1, cy, cx, y1, x0, cy), fill=fill)
    else:  # cross
        third = size / 3
        draw.rectangle((x0 + third, y0, x1 - third, y1), fill=fill)
        draw.rectangle((x0, y0 + third, x1, y1 - third), fill=fill)


def render(scene: list[Obj], image_size: int, seed: int) -> Image.Image:
    """The scene drawn on a dark canvas, each object jittered from ``seed``."""
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    rng = random.Random(seed)
    for obj in scene:
        _draw(draw, obj, image_size // 2, rng)
    return image


class ShapesDataset(Dataset):
    """Samples of one task of the synthetic stream; images are rendered on access. ``name``:
    the task's name in the stream (a round's, ``colour_2``), which its sample ids and scenes
    are drawn from (default: the task)."""

    def __init__(
        self,
        task: str,
        split: str,
        size: int,
        seed: int,
        image_size: int,
        templates: Sequence[str] = (),
        name: str | None = None,
    ) -> None:
        self.task, self.split, self.image_size = task, split, image_size
        self.name = name or task
        rng = random.Random(f"{seed}/{self.name}/{split}")
        self.scenes = [self._scene(rng) for _ in range(size)]
        templates = templates or INSTRUCTIONS.get(task) or QUESTIONS[task]
        self.questions = [rng.choice(templates) for _ in range(size)]
        self.render_seeds = [rng.getrandbits(32) for _ in range(size)]

    def _scene(self, rng: random.Random) -> list[Obj]:
        count = rng.randint(1, len(QUADRANTS)) if self.task == "count" else 1
        quadrants = rng.sample(range(len(QUADRANTS)), count)
        return [Obj(rng.choice(SHAPES), rng.choice(list(COLOURS)), q) for q in quadrants]

    def _answer(self, scene: list[Obj]) -> str:
        obj = scene[0]
        return {
            "colour": obj.colour,
            "shape": obj.shape,
            "count": NUMBERS[len(scene) - 1],
            "position": QUADRANTS[obj.quadrant],
            "caption": f"a {obj.colour} {obj.shape} in the {QUADRANTS[obj.quadrant]}",
            "draw_colour": obj.colour,  # what the scorer checks the drawing for
            "draw_position": QUADRANTS[obj.quadrant],
            "draw": f"a {obj.colour} {obj.shape} in the {QUADRANTS[obj.quadrant]}",
        }[self.task]

    def __len__(self) -> int:
        return len(self.scenes)

    def text(self, index: int) -> dict:
        """The sample without its image (cheap): id, question and answer (and the caption the
        generator reads, for a generation task)."""
        sample_id, answer = f"{self.name}-{self.split}-{index}", self._answer(self.scenes[index])
        if self.task not in INSTRUCTIONS:
            return {"id": sample_id, "question": f"<image>\n{self.questions[index]}", "answer": answer}
        obj = self.scenes[index][0]
        words = {"colour": obj.colour, "shape": obj.shape, "quadrant": QUADRANTS[obj.quadrant]}
        question = self.questions[index].format(**words)
        return {
            "id": sample_id,
            "question": question,
            "answer": answer,
            "caption": CAPTIONS[self.task].format(**words),
        }

    def render(self, index: int) -> Image.Image:
        return render(self.scenes[index], self.image_size, self.render_seeds[index])

    def __getitem__(self, index: int) -> dict:
        # A generation sample's image is its target, not its input.
        return {**self.text(index), ("target" if self.task in INSTRUCTIONS else "image"): self.render(index)}


class ConcatShapes(ConcatDataset):
    """Several tasks' samples as one dataset (pre-training: captioning and drawing), with
    ``text(i)``."""

    def text(self, index: int) -> dict:
        part = bisect.bisect_right(self.cumulative_sizes, index)
        return self.datasets[part].text(index - (self.cumulative_sizes[part - 1] if part else 0))


class SyntheticShapes(TaskStream):
    """Coloured-shapes VQA stream, deterministic from ``seed``, generated in seconds.

    Args:
        tasks: the instruction tasks in stream order: colour, shape, count, position ask about
            an image; draw_colour and draw_position ask for one (a model with a generator).
        train_size: training samples per task.
        test_size: test samples per task.
        pretrain_size: captioning samples for MM pre-training (0: no pre-training task).
        general_size: samples per question type (colour, shape, count, position) of general
            instruction tuning added to pre-training, asked with only the first two of each
            type's three questions (the tasks ask with all three). The model enters the
            stream instruction-tuned, as LLaVA-1.5 does, and answers the tasks partly
            zero-shot, so tuning on early tasks can hurt later ones (negative forward
            transfer). 0: no general tuning.
        image_size: side of the square images in pixels.
        seed: the seed every scene is drawn from.
        rounds: the task list is run this many times, each round a new set of tasks named
            ``<task>_<round>`` from the second round on (``colour_2``), with samples of their
            own: a long stream of recurring skills (4 tasks, 5 rounds: 20 stages).
    """

    def __init__(
        self,
        tasks: Sequence[str] = UNDERSTANDING,
        train_size: int = 1000,
        test_size: int = 100,
        pretrain_size: int = 1000,
        general_size: int = 0,
        image_size: int = 32,
        seed: int = 0,
        rounds: int = 1,
    ) -> None:
        if rounds < 1:
            raise ValueError(f"SyntheticShapes: rounds must be at least 1, got {rounds}")
        unknown = sorted(set(tasks) - set(TASKS))
        if unknown:
            raise ValueError(f"unknown synthetic task(s) {unknown}; choose from {list(TASKS)}")

        if general_size and not pretrain_size:
            raise ValueError("SyntheticShapes: general_size adds to pre-training; set pretrain_size too")

        def make(task: str, train_size: int, name: str | None = None) -> Task:
            return Task(
                name=name or task,
                train=ShapesDataset(task, "train", train_size, seed, image_size, name=name),
                test=ShapesDataset(task, "test", test_size, seed, image_size, name=name),
                scorer=GENERATION_SCORERS.get(task, "exact_match"),
            )

        self.tasks = [
            make(task, train_size, f"{task}_{r}" if r > 1 else None)
            for r in range(1, rounds + 1)
            for task in tasks
        ]
        self.pretrain_task = None
        if pretrain_size:
            # With generation tasks in the stream, pre-training also aligns the Output Projector
            # on whole-scene drawings, as captioning aligns the Input Projector.
            self.pretrain_task = make("caption", pretrain_size)
            parts = [self.pretrain_task.train]
            if any(task in GENERATION_SCORERS for task in tasks):
                parts.append(ShapesDataset("draw", "train", pretrain_size, seed, image_size))
            if general_size:
                parts += [
                    ShapesDataset(t, "general", general_size, seed, image_size, QUESTIONS[t][:2])
                    for t in UNDERSTANDING
                ]
            if len(parts) > 1:
                self.pretrain_task.train = ConcatShapes(parts)
