"""Video for the assembled model: frames sampled evenly from the clip, each read by the image
Modality Encoder, their features averaged over time into a few groups of frames (PLLaVA's
temporal pooling, arXiv 2404.16994, in time only), then the video's own Input Projector,
which first adds a learned embedding per group (Video-LLaMA's frame position embedding,
arXiv 2306.02858).

A clip is ``pooled_frames`` times an image's tokens, in order. The group embedding puts the
order into each token's features: the LLM's attention sums what it reads from the tokens, and
without it a shape going left and one going right (the same two quadrants, in the other
order) would sum to the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from contmm.model.media import Clip, Video, clip_metadata, decode_clip, evenly_spaced


def sampled_frames(video: Video | Clip, num_frames: int) -> list[Image.Image]:
    """``num_frames`` frames spread evenly over the clip (the stream's ``num_frames`` where it
    sets one), decoded; a stream's ``fps`` sampling is refused: every clip of a batch must give
    as many frames."""
    if isinstance(video, Video):
        if video.fps is not None:
            raise ValueError(
                f"{video.path}: the assembled model samples a fixed number of frames per clip "
                "(model.encoders.video.num_frames or the stream's num_frames); the stream's fps "
                "applies to whole checkpoints"
            )
        count = video.num_frames or num_frames
        frames = decode_clip(video.path, evenly_spaced(clip_metadata(video.path).total_num_frames, count))
    else:
        frames = video.frames[evenly_spaced(len(video.frames), num_frames)]
    return [Image.fromarray(frame) for frame in frames]


def temporal_pool(features: torch.Tensor, groups: int) -> torch.Tensor:
    """(videos, frames, tokens, width) -> (videos, groups, tokens, width): each token's
    features averaged over ``groups`` consecutive runs of frames, in order."""
    videos, frames, tokens, width = features.shape
    by_token = features.permute(0, 2, 3, 1).reshape(videos, tokens * width, frames)
    pooled = F.adaptive_avg_pool1d(by_token, groups).reshape(videos, tokens, width, groups)
    return pooled.permute(0, 3, 1, 2)


class VideoProjector(nn.Module):
    """The video's Input Projector: a learned embedding per group of frames added to the
    group's features (as ``nn.Embedding`` initialises one), then ``projector`` on every token."""

    def __init__(self, projector: nn.Module, groups: int, width: int) -> None:
        super().__init__()
        self.frame_embeddings = nn.Parameter(torch.randn(groups, width))
        self.projector = projector

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """(videos, groups, tokens, width) -> (videos, groups * tokens, LLM width)."""
        return self.projector((pooled + self.frame_embeddings[:, None].to(pooled.dtype)).flatten(1, 2))
