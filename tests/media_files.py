"""Tiny video clips and sounds written with PyAV and soundfile (the tests' media files)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import soundfile

from contmm.model.media import Video

# A codec PyAV's wheels encode with, per container.
CODECS = {".mp4": "libx264", ".mkv": "mpeg4", ".webm": "libvpx", ".avi": "mpeg4", ".mov": "mpeg4"}


def clip_frames(frames: int, size: int, seed: int) -> np.ndarray:
    """A bar of a seeded colour moving right, 3 pixels per frame: every frame differs, and a
    shorter clip is the longer one's beginning."""
    rng = np.random.default_rng(seed)
    colour = rng.integers(64, 256, 3, dtype=np.uint8)
    video = np.zeros((frames, size, size, 3), np.uint8)
    step = 3
    for t in range(frames):
        video[t, :, t * step : t * step + step] = colour
    return video


def write_clip(path: Path, frames: int = 6, size: int = 56, fps: int = 4, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(CODECS[path.suffix], rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for frame in clip_frames(frames, size, seed):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def write_tone(path: Path, seconds: float = 0.5, rate: int = 8000, hz: float = 440.0) -> Path:
    """A sine tone; at 8 kHz, so a 16 kHz model's reading resamples it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    soundfile.write(path, (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32), rate)
    return path


def truncate(path: Path, fraction: float = 0.5) -> Path:
    """Cut the file to ``fraction`` of its bytes, as an interrupted copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def as_modality(samples: list[dict], modality: str, folder: Path, cut: bool = False) -> list[dict]:
    """The samples with their image replaced by a clip (``<video>``) or a sound (``<audio>``),
    written to ``folder``, of lengths that differ from sample to sample; ``cut``: each clip
    without its last two frames, each sound without its last 0.1 s. ``image``: as they are."""
    if modality == "image":
        return samples
    converted = []
    for k, sample in enumerate(samples):
        medium = {k: v for k, v in sample.items() if k != "image"}
        medium["question"] = sample["question"].replace("<image>", f"<{modality}>")
        if modality == "video":
            medium["video"] = Video(write_clip(folder / f"clip{k}.mp4", 6 + 2 * (k % 3) - 2 * cut, seed=k))
        else:
            seconds = 0.4 + 0.2 * (k % 3) - 0.1 * cut
            medium["audio"] = write_tone(folder / f"sound{k}.wav", seconds, hz=300 + 100 * k)
        converted.append(medium)
    return converted
