"""Video decoding per CPU core: clips as mp4 files decoded with PyAV, as contmm reads them
(``contmm.model.media``), against the same frames stored as JPEG files in a directory per
clip (which contmm also reads, one PIL ``open_rgb`` per frame); and how many DataLoader
workers that would take to keep a LLaVA-OneVision-7B training step fed.

Writes ``--clips`` generated clips (default 10 s at 30 fps, 336x336: 300 frames, the size of
a short clip a video LLM reads) to a temporary folder: a textured scene panned across (the
camera's motion), a disc moving over it, and fresh noise in every frame, so that it
compresses like video rather than like a flat colour. Each is written once as an mp4
(libx264, its default CRF 23) and once as a directory of JPEG frames. Five sides are timed,
alternating over ``--rounds`` (best of each):

- whole clip: contmm's ``load_clip`` (what ``contmm.model.chat``'s collator calls for a
  Hugging Face checkpoint's video sample, whatever frames the processor then keeps), on the
  mp4 and on the frames;
- whole clip, PyAV with its decoder forced to one thread (not contmm's path: what a core
  decodes without FFmpeg's threads, see below);
- ``--num-frames`` sampled frames: ``clip_metadata`` then ``decode_clip(path, indices)`` with
  transformers' own uniform indices (``default_sample_indices_fn``; LLaVA-OneVision reads 32
  frames), on the mp4 and on the frames. PyAV must still decode every frame up to the last
  one wanted (it only skips their RGB conversion); the directory opens just the wanted files.

Per core: the rate is clips per second of the process's CPU time (``time.process_time``,
which counts every thread of the process), so a decoder that runs threads is charged for
all the cores it keeps busy; wall time and CPU/wall are printed beside it. contmm leaves
PyAV's default, which is threaded (``thread_type`` SLICE, ``thread_count`` 0: FFmpeg picks,
cores + 1; the script prints what the decoder opened with); the one-thread row shows what
those threads cost. torch runs one thread. The files are in the page cache (just written):
disk reads are not timed, nor the processor's resizing and normalising of the frames.

Workers: ceil(GPU samples per second / clips per second per core), per GPU and per node.
The GPU rate is an assumption, not a measurement (no GPU here): ``--gpu-samples-per-second``,
by default derived from the LLM's training FLOPs per sample at an assumed utilisation::

    visual tokens  = num_frames * 196 + 1 = 6273 (32 frames; 14x14 pooled SigLIP patches a
                     frame, one newline token; text, a few hundred tokens, left out)
    FLOPs/token    = 6 * 7.07e9 = 4.24e10 (Qwen2-7B's matmul weights, LM head included,
                     input embedding not; forward and backward)
    FLOPs/sample   = 6273 * 4.24e10 = 2.66e14
    GPU FLOP/s     = 0.40 MFU * 989e12 (H100 SXM dense bf16) = 3.96e14
    samples/s      = 3.96e14 / 2.66e14 = 1.49 per GPU

Attention's own FLOPs (6 * 28 layers * 6273 * 3584 = 3.8e9 a token, causal: +9 %), the vision
tower's (SigLIP-400M over 32 x 729 patches: 1.9e13 forward if frozen, 5.6e13 if trained,
+7-21 %) and the text make a real step slower, so this rate, and the workers computed from
it, err high. The workers are for decoding alone (a lower bound for a whole DataLoader).

Run: ``python bench/media_decode.py [--clips 8] [--seconds 10] [--fps 30] [--size 336]
[--num-frames 32] [--rounds 5] [--gpu-samples-per-second 1.49] [--gpus 8]``
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch
from common import alternating_rounds
from PIL import Image
from transformers.video_utils import VideoMetadata, default_sample_indices_fn

from contmm.model.media import Video, clip_metadata, decode_clip, load_clip

# The assumed GPU step (see the module's docstring): none of these is measured here.
TOKENS_PER_FRAME = 196  # LLaVA-OneVision: SigLIP's 27x27 patches pooled 2x to 14x14
LLM_MATMUL_WEIGHTS = 7.07e9  # Qwen2-7B: 28 layers of 233 M, plus the 545 M LM head
H100_BF16_FLOPS = 989e12  # dense, SXM
ASSUMED_MFU = 0.40


def assumed_gpu_rate(num_frames: int) -> tuple[float, str]:
    """Samples per second per GPU from the assumptions above, and the arithmetic as text."""
    tokens = num_frames * TOKENS_PER_FRAME + 1
    per_sample = tokens * 6 * LLM_MATMUL_WEIGHTS
    rate = ASSUMED_MFU * H100_BF16_FLOPS / per_sample
    text = (
        f"{tokens} visual tokens x 6 x {LLM_MATMUL_WEIGHTS:.3g} weights = {per_sample:.3g} FLOPs/sample; "
        f"{ASSUMED_MFU:.0%} MFU of an H100's {H100_BF16_FLOPS:.3g} bf16 FLOP/s -> {rate:.2f} samples/s"
    )
    return rate, text


def scene_frames(frames: int, size: int, seed: int):
    """RGB frames of a textured scene panned one pixel a frame, a disc crossing it, and
    noise of its own in every frame (what keeps a codec from predicting a frame exactly)."""
    rng = np.random.default_rng(seed)
    width = size + frames
    coarse = rng.integers(0, 256, (size // 16 + 2, width // 16 + 2, 3), dtype=np.uint8)
    scene = np.asarray(Image.fromarray(coarse).resize((width, size), Image.BICUBIC), np.float32)
    scene = scene + rng.normal(0, 6, scene.shape).astype(np.float32)  # fine texture, moves with it
    colour = rng.integers(0, 256, 3)
    y, x = np.mgrid[0:size, 0:size]
    for t in range(frames):
        frame = scene[:, t : t + size].copy()
        cy = size / 2 + size / 3 * math.sin(4 * math.pi * t / frames)
        cx = (3 * t) % size
        frame[(y - cy) ** 2 + (x - cx) ** 2 < (size / 8) ** 2] = colour
        frame += rng.normal(0, 3, frame.shape).astype(np.float32)
        yield np.clip(frame, 0, 255).astype(np.uint8)


def write_clip(folder: Path, k: int, args) -> tuple[Path, Path]:
    """Clip ``k`` as an mp4 and as a directory of JPEG frames, the same frames in both."""
    mp4, frames_dir = folder / f"clip{k}.mp4", folder / f"clip{k}"
    frames_dir.mkdir()
    with av.open(str(mp4), "w") as container:
        stream = container.add_stream("libx264", rate=args.fps)
        stream.width = stream.height = args.size
        stream.pix_fmt = "yuv420p"
        for i, pixels in enumerate(scene_frames(args.seconds * args.fps, args.size, seed=k)):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
            Image.fromarray(pixels).save(frames_dir / f"{i:05d}.jpg", quality=args.jpeg_quality)
        container.mux(stream.encode())
    return mp4, frames_dir


def timed(run, clips: list[Path]):
    """A side run over every clip: (CPU seconds of the whole process, wall seconds)."""

    def side() -> tuple[float, float]:
        cpu, wall = time.process_time(), time.perf_counter()
        for clip in clips:
            run(clip)
        return time.process_time() - cpu, time.perf_counter() - wall

    return side


def whole(clip: Path) -> tuple[np.ndarray, VideoMetadata]:
    """The whole clip, as ``contmm.model.chat`` reads a video sample."""
    return load_clip(Video(clip))


def sampled(num_frames: int):
    """Read ``num_frames`` uniformly sampled frames, as the processor would pick them."""

    def run(clip: Path) -> np.ndarray:
        indices = default_sample_indices_fn(clip_metadata(clip), num_frames=num_frames)
        return decode_clip(clip, indices.tolist())

    return run


def whole_one_thread(clip: Path) -> np.ndarray:
    """``load_clip``'s work with the decoder forced to one thread: what a core costs when
    FFmpeg's threads are not there to add their overhead."""
    clip_metadata(clip)
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        stream.thread_type, stream.codec_context.thread_count = "NONE", 1
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(stream)])


def pyav_threading(mp4: Path) -> str:
    """The decoder's threading as contmm opens it (nothing set): after decoding a frame,
    when FFmpeg has resolved thread_count 0 (auto)."""
    with av.open(str(mp4)) as container:
        stream = container.streams.video[0]
        next(container.decode(stream))
        return f"thread_type {stream.thread_type.name}, thread_count {stream.codec_context.thread_count}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--size", type=int, default=336, help="frame width and height")
    parser.add_argument("--num-frames", type=int, default=32, help="frames sampled per clip")
    parser.add_argument("--jpeg-quality", type=int, default=90)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--gpu-samples-per-second",
        type=float,
        default=None,
        help="ASSUMED training samples/s of one GPU (default: derived, see the docstring)",
    )
    parser.add_argument("--gpus", type=int, default=8, help="GPUs of a node")
    args = parser.parse_args()
    torch.set_num_threads(1)  # nothing here uses torch; keep its pool from taking a core
    frames = args.seconds * args.fps

    with tempfile.TemporaryDirectory() as tmp:
        pairs = [write_clip(Path(tmp), k, args) for k in range(args.clips)]
        mp4s, dirs = [p[0] for p in pairs], [p[1] for p in pairs]
        for clip in (mp4s[0], dirs[0]):  # both forms hold every frame
            assert len(load_clip(Video(clip))[0]) == frames, clip
        some = sampled(args.num_frames)
        n = args.num_frames
        sides = {
            "whole clip, PyAV mp4": timed(whole, mp4s),
            "whole clip, JPEG frames": timed(whole, dirs),
            "whole clip, PyAV mp4, 1 thread": timed(whole_one_thread, mp4s),
            f"{n} sampled frames, PyAV mp4": timed(some, mp4s),
            f"{n} sampled frames, JPEG frames": timed(some, dirs),
        }
        best = {name: [math.inf, math.inf] for name in sides}
        for results in alternating_rounds(args.rounds, sides):
            for name, (cpu, wall) in results.items():
                best[name] = [min(best[name][0], cpu), min(best[name][1], wall)]
        mp4_mb = sum(p.stat().st_size for p in mp4s) / args.clips / 1e6
        jpg_mb = sum(f.stat().st_size for d in dirs for f in d.iterdir()) / args.clips / 1e6
        threading = pyav_threading(mp4s[0])

    print(
        f"{args.clips} clips of {args.seconds} s at {args.fps} fps, {args.size}x{args.size} ({frames} frames); "
        f"mp4 (libx264 CRF 23) {mp4_mb:.2f} MB a clip, JPEG frames (quality {args.jpeg_quality}) {jpg_mb:.2f} MB"
    )
    print(f"PyAV decoder as contmm opens it: {threading}; best of {args.rounds} rounds")
    print(f"{'':34} {'clips/s/core':>12} {'CPU s/clip':>11} {'wall s/clip':>12} {'CPU/wall':>9}")
    rate = {}
    for name, (cpu, wall) in best.items():
        rate[name] = args.clips / cpu
        print(
            f"{name:34} {rate[name]:12.2f} {cpu / args.clips:11.3f} {wall / args.clips:12.3f} {cpu / wall:9.2f}"
        )
    names = list(rate)
    print(
        f"JPEG frames / PyAV mp4, clips/s/core: whole clip {rate[names[1]] / rate[names[0]]:.2f}x, "
        f"{n} sampled frames {rate[names[4]] / rate[names[3]]:.2f}x"
    )

    derived, arithmetic = assumed_gpu_rate(n)
    gpu = args.gpu_samples_per_second or derived
    source = "given with --gpu-samples-per-second" if args.gpu_samples_per_second else arithmetic
    print(
        f"\nDataLoader workers (one core each, decoding alone) to keep up with an ASSUMED, NOT MEASURED "
        f"GPU rate of {gpu:.2f} samples/s"
    )
    print(f"  ({source})")
    node = f"workers per {args.gpus}-GPU node"
    print(f"{'':34} {'cores per GPU':>14} {'workers per GPU':>16} {node:>{len(node) + 1}}")
    for name in names:
        cores = gpu / rate[name]
        print(
            f"{name:34} {cores:14.2f} {math.ceil(cores):16d} {math.ceil(args.gpus * cores):{len(node) + 1}d}"
        )


if __name__ == "__main__":
    main()
