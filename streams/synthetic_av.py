"""A synthetic stream over three media: the shapes stream's image tasks, sounds and clips, all
rendered from a seed in memory (no files, no downloads), for modality-incremental tuning.

Sound tasks (one second of mono audio): ``pitch`` (a tone high or low), ``beeps`` (how many
short beeps), ``sweep`` (a tone rising or falling). Clip tasks (a shape on the shapes
stream's four-quadrant canvas, over ``num_frames`` frames): ``direction`` (where it moves:
left, right, up, down, from one quadrant into the next), ``appear`` (which shape appears
half-way through an empty clip), ``speed`` (a slow shape stays in its quadrant; a fast one
goes into the next quadrant and back). Each task asks with its own questions; the answer
words of the sound and clip tasks are their own, so tuning on a later task can only be told
from forgetting by the matrix.

Every value is drawn at construction (cheap); a sample's sound or frames are rendered when it
is read, as :class:`~contmm.model.media.Waveform` / :class:`~contmm.model.media.Clip`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from contmm.model.media import Clip, Waveform
from contmm.scoring.images import BACKGROUND, PALETTE
from contmm.stream import Task, TaskStream
from streams.synthetic import NUMBERS, SHAPES, UNDERSTANDING, Obj, ShapesDataset, _draw

QUESTIONS = {
    "pitch": ("is the tone high or low ?", "what pitch is the sound ?", "how high is the tone ?"),
    "beeps": ("how many beeps are there ?", "count the beeps .", "how many times does it beep ?"),
    "sweep": (
        "does the tone rise or fall ?",
        "which way does the pitch move ?",
        "is the sweep rising or falling ?",
    ),
    "direction": (
        "which way does the shape move ?",
        "where does the object go ?",
        "in which direction is the shape moving ?",
    ),
    "appear": ("which shape appears ?", "what shows up in the video ?", "name the shape that appears ."),
    "speed": (
        "how fast does the shape move ?",
        "is the object slow or fast ?",
        "tell the speed of the shape .",
    ),
}
SOUND_TASKS = ("pitch", "beeps", "sweep")
CLIP_TASKS = ("direction", "appear", "speed")
TASKS = (*UNDERSTANDING, *SOUND_TASKS, *CLIP_TASKS)
ANSWERS = {
    "pitch": ("high", "low"),
    "beeps": NUMBERS,
    "sweep": ("rising", "falling"),
    "direction": ("left", "right", "up", "down"),
    "appear": SHAPES,
    "speed": ("slow", "fast"),
}
# Quadrants 0 1 / 2 3: the quadrant a move in each direction starts from and ends in.
MOVES = {
    "right": ((0, 1), (2, 3)),
    "left": ((1, 0), (3, 2)),
    "down": ((0, 2), (1, 3)),
    "up": ((2, 0), (3, 1)),
}


class RenderedTask(Dataset):
    """What the samples of a sound or clip task share: an answer and a question each, drawn
    from the seed, and the medium (``medium``: its key and placeholder) rendered on access."""

    medium = ""

    def _draw(self, task: str, split: str, size: int, seed: int) -> random.Random:
        """Draw the answers and questions; returns the generator the rest is drawn from."""
        self.task, self.split = task, split
        rng = random.Random(f"{seed}/{task}/{split}")
        self.answers = [rng.choice(ANSWERS[task]) for _ in range(size)]
        self.questions = [rng.choice(QUESTIONS[task]) for _ in range(size)]
        return rng

    def __len__(self) -> int:
        return len(self.answers)

    def text(self, index: int) -> dict:
        return {
            "id": f"{self.task}-{self.split}-{index}",
            "question": f"<{self.medium}>\n{self.questions[index]}",
            "answer": self.answers[index],
        }

    def render(self, index: int) -> Waveform | Clip:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict:
        return {**self.text(index), self.medium: self.render(index)}


class SoundDataset(RenderedTask):
    """Samples of one sound task, each a second (``seconds``) of audio at ``sampling_rate``."""

    medium = "audio"

    def __init__(
        self, task: str, split: str, size: int, seed: int, sampling_rate: int, seconds: float
    ) -> None:
        rng = self._draw(task, split, size, seed)
        self.sampling_rate, self.length = sampling_rate, int(seconds * sampling_rate)
        self.render_seeds = [rng.getrandbits(32) for _ in range(size)]

    def render(self, index: int) -> Waveform:
        rng = np.random.default_rng(self.render_seeds[index])
        rate, answer = self.sampling_rate, self.answers[index]
        sound = np.zeros(self.length)
        if self.task == "beeps":
            count, pitch = NUMBERS.index(answer) + 1, rng.uniform(600, 1200)
            beep, slot, gap = int(rng.uniform(0.06, 0.09) * rate), self.length // 4, int(0.05 * rate)
            for k in range(count):  # one beep in each of `count` quarters, 50 ms of silence after it
                start = k * slot + int(rng.integers(0, slot - beep - gap))
                sound[start : start + beep] = _tone(pitch, pitch, beep, rate)
        else:
            span = int(rng.uniform(0.4, 0.8) * self.length)
            start = int(rng.integers(0, self.length - span))
            if self.task == "pitch":
                low, high = (1600, 3200) if answer == "high" else (200, 400)
                pitch = rng.uniform(low, high)
                sound[start : start + span] = _tone(pitch, pitch, span, rate)
            else:  # sweep: two octaves up or down
                base = rng.uniform(300, 600)
                begin, end = (base, 4 * base) if answer == "rising" else (4 * base, base)
                sound[start : start + span] = _tone(begin, end, span, rate)
        sound = sound * rng.uniform(0.3, 0.8) + rng.normal(0, 0.01, self.length)
        return Waveform(sound.astype(np.float32), rate)


def _tone(begin: float, end: float, length: int, rate: int) -> np.ndarray:
    """A sine whose pitch goes from ``begin`` to ``end`` Hz (geometrically), with 5 ms ramps."""
    pitch = begin * (end / begin) ** np.linspace(0, 1, length)
    wave = np.sin(2 * np.pi * np.cumsum(pitch) / rate)
    ramp = np.minimum(1, np.minimum(np.arange(length), np.arange(length)[::-1]) / (0.005 * rate))
    return wave * ramp


class ClipDataset(RenderedTask):
    """Samples of one clip task: ``num_frames`` frames of ``image_size`` pixels at ``fps``."""

    medium = "video"

    def __init__(
        self, task: str, split: str, size: int, seed: int, image_size: int, num_frames: int, fps: float
    ) -> None:
        rng = self._draw(task, split, size, seed)
        self.image_size, self.num_frames, self.fps = image_size, num_frames, fps
        self.objects = [
            (rng.choice(SHAPES), rng.choice(list(PALETTE)), rng.randrange(4)) for _ in range(size)
        ]
        self.render_seeds = [rng.getrandbits(32) for _ in range(size)]

    def _path(self, index: int, rng: random.Random) -> list[int | None]:
        """The quadrant of the shape in each frame (None: not drawn)."""
        answer, (_, _, quadrant), half = self.answers[index], self.objects[index], self.num_frames // 2
        if self.task == "direction":
            start, end = rng.choice(MOVES[answer])
            return [start] * half + [end] * (self.num_frames - half)
        if self.task == "appear":
            return [None] * half + [quadrant] * (self.num_frames - half)
        if answer == "slow":
            return [quadrant] * self.num_frames
        other = rng.choice([q for pair in MOVES.values() for start, q in pair if start == quadrant])
        third = self.num_frames // 3
        return [quadrant] * third + [other] * (self.num_frames - 2 * third) + [quadrant] * third

    def render(self, index: int) -> Clip:
        rng = random.Random(self.render_seeds[index])
        shape, colour, _ = self.objects[index]
        if self.task == "appear":
            shape = self.answers[index]
        frames = []
        for quadrant in self._path(index, rng):
            image = Image.new("RGB", (self.image_size, self.image_size), BACKGROUND)
            if quadrant is not None:
                _draw(ImageDraw.Draw(image), Obj(shape, colour, quadrant), self.image_size // 2, rng)
            frames.append(np.asarray(image))
        return Clip(np.stack(frames), self.fps)


class SyntheticAV(TaskStream):
    """Image, sound and clip tasks in one stream, deterministic from ``seed``.

    Args:
        tasks: the tasks in stream order: the shapes stream's image tasks (colour, shape,
            count, position), sound tasks (pitch, beeps, sweep), clip tasks (direction,
            appear, speed).
        train_size: training samples per task.
        test_size: test samples per task.
        pretrain_size: image captioning samples for MM pre-training (0: none). Only images
            are pre-trained: a sound's or clip's components are first trained at the first
            stage with that medium.
        image_size: side of the images and frames in pixels.
        num_frames: frames per clip.
        fps: frames per second of a clip.
        sampling_rate: samples per second of a sound.
        seconds: length of a sound.
        seed: the seed every sample is drawn from.
    """

    def __init__(
        self,
        tasks: Sequence[str] = ("colour", "pitch", "appear"),
        train_size: int = 1000,
        test_size: int = 100,
        pretrain_size: int = 1000,
        image_size: int = 32,
        num_frames: int = 8,
        fps: float = 4.0,
        sampling_rate: int = 16000,
        seconds: float = 1.0,
        seed: int = 0,
    ) -> None:
        if unknown := sorted(set(tasks) - set(TASKS)):
            raise ValueError(f"unknown synthetic audio-video task(s) {unknown}; choose from {list(TASKS)}")

        def split(task: str, name: str, size: int) -> Dataset:
            if task in SOUND_TASKS:
                return SoundDataset(task, name, size, seed, sampling_rate, seconds)
            if task in CLIP_TASKS:
                return ClipDataset(task, name, size, seed, image_size, num_frames, fps)
            return ShapesDataset(task, name, size, seed, image_size)

        self.tasks = [
            Task(name=task, train=split(task, "train", train_size), test=split(task, "test", test_size))
            for task in tasks
        ]
        self.pretrain_task = None
        if pretrain_size:
            self.pretrain_task = Task(
                "caption", split("caption", "train", pretrain_size), split("caption", "test", test_size)
            )
