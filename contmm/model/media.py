"""Video and audio as a model reads them: a clip's frames decoded with PyAV, a sound's samples
with soundfile, resampled as transformers resamples them.

A video is a file (mp4, webm, mkv, mov, avi) or a directory of frame images (read in name
order). :func:`clip_metadata` reads how many frames a clip has and at what rate without
decoding its pixels: the container's header, or, where the header does not say (WebM and
Matroska often do not), its video packets counted. :func:`decode_clip` decodes the frames
asked for as transformers' own PyAV reader (``transformers.video_utils.read_video_pyav``)
does: in order, keeping those at the asked indices, RGB. It is written here rather than
called there because that reader takes the frame count from the header only, and fails on
a WebM file.

Audio is transformers' own ``load_audio`` with its soundfile backend: decoded with
soundfile (wav, flac, mp3, ogg), down-mixed to mono by averaging, resampled with soxr to the
rate asked (a checkpoint's feature extractor's), never left at another rate.

A stream that renders its media in memory (the synthetic audio-video stream) gives a
:class:`Clip` (frames and their rate) or a :class:`Waveform` (samples and their rate) instead
of a path; they are read as files are, a waveform resampled with soxr as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import soxr
from transformers.audio_utils import load_audio
from transformers.video_utils import VideoMetadata

from contmm.model.images import open_rgb

VIDEO_FILES = (".mp4", ".webm", ".mkv", ".mov", ".avi")
AUDIO_FILES = (".wav", ".flac", ".mp3", ".ogg")
FRAME_FILES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass(frozen=True)
class Video:
    """A sample's video: its file (or directory of frames) and how its frames are sampled:
    ``num_frames`` spread evenly, or ``fps`` frames per second of the clip; neither: as the
    model's processor samples a whole decoded clip."""

    path: Path
    num_frames: int | None = None
    fps: float | None = None

    def sampling(self) -> dict:
        """The sampling asked, as ``sample_frames`` keywords (``num_frames`` or ``fps``); none
        when nothing is asked."""
        if self.num_frames is not None:
            return {"num_frames": self.num_frames}
        if self.fps is not None:
            return {"fps": self.fps}
        return {}


@dataclass(frozen=True, eq=False)
class Clip:
    """A clip rendered in memory: ``frames`` (frames, height, width, 3) uint8, ``fps`` per second."""

    frames: np.ndarray
    fps: float


@dataclass(frozen=True, eq=False)
class Waveform:
    """A sound rendered in memory: mono float32 ``samples`` at ``sampling_rate``."""

    samples: np.ndarray
    sampling_rate: int


def evenly_spaced(total: int, count: int) -> list[int]:
    """``count`` frame indices spread evenly over ``total`` frames, first and last included
    (the assembled model's sampling; a whole checkpoint's processor samples its own way)."""
    if count > total:
        raise ValueError(f"{count} frames asked of a clip of {total}")
    return np.linspace(0, total - 1, count).round().astype(int).tolist()


def frame_files(directory: Path) -> list[Path]:
    """A directory clip's frames, in name order."""
    return sorted(p for p in directory.iterdir() if p.suffix.lower() in FRAME_FILES and p.is_file())


def clip_metadata(path: Path) -> VideoMetadata:
    """The clip's frame count, rate and size, its pixels not decoded. A directory of frames
    has no rate (``fps`` None). Raises ``av.FFmpegError`` (an OSError) or ValueError for a
    file that is no readable video."""
    if path.is_dir():
        frames = frame_files(path)
        return VideoMetadata(total_num_frames=len(frames), fps=None, video_backend="frames")
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("it holds no video stream")
        stream = container.streams.video[0]
        count = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
        rate = float(stream.average_rate) if stream.average_rate else None
        return VideoMetadata(
            total_num_frames=count,
            fps=rate,
            duration=count / rate if rate else None,
            height=stream.height,
            width=stream.width,
            video_backend="pyav",
        )


def decode_clip(path: Path, indices: list[int] | None = None) -> np.ndarray:
    """The frames at ``indices`` (all when None) as a (frames, height, width, 3) uint8 array."""
    if path.is_dir():
        files = frame_files(path)
        chosen = files if indices is None else [files[i] for i in indices]
        return np.stack([np.asarray(open_rgb(file)) for file in chosen])
    wanted = None if indices is None else set(indices)
    last = None if indices is None else max(indices)
    frames = []
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if last is not None and i > last:
                break
            if wanted is None or i in wanted:
                frames.append(frame.to_ndarray(format="rgb24"))
    if not frames:
        raise ValueError("no frame could be decoded")
    return np.stack(frames)


def load_clip(video: Video | Clip) -> tuple[np.ndarray, VideoMetadata]:
    """The whole clip decoded, with its metadata (what a processor samples from)."""
    if isinstance(video, Clip):
        count = len(video.frames)
        metadata = VideoMetadata(total_num_frames=count, fps=video.fps, duration=count / video.fps)
        metadata.frames_indices = np.arange(count)
        return video.frames, metadata
    metadata = clip_metadata(video.path)
    frames = decode_clip(video.path)
    metadata.frames_indices = np.arange(len(frames))
    return frames, metadata


def load_waveform(sound: Path | Waveform, sampling_rate: int) -> np.ndarray:
    """The sound (a file or a :class:`Waveform`), mono float32 at ``sampling_rate`` (see the
    module's docstring)."""
    if isinstance(sound, Waveform):
        if sound.sampling_rate == sampling_rate:
            return sound.samples
        # soxr_hq: the quality transformers' loader resamples a file with.
        resampled = soxr.resample(sound.samples, sound.sampling_rate, sampling_rate, quality="soxr_hq")
        return np.ascontiguousarray(resampled, dtype=np.float32)
    return load_audio(str(sound), sampling_rate=sampling_rate, backend="soundfile")
