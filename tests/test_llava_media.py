"""Video and audio records in LLaVA / CoIN files: read, decoded as transformers decodes them,
and every bad clip, sound or placeholder named (file and record) before training."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image
from transformers.audio_utils import load_audio
from transformers.video_utils import load_video

from contmm.model import ModelConfig, build_model
from contmm.model.media import Video, clip_metadata, decode_clip, load_clip, load_waveform
from contmm.model.modalities import check_modalities
from contmm.model.pretrained import FAMILIES
from strategies.projector_expansion import ProjectorExpansion
from streams.llava import LLaVAStream, TaskFiles
from tests.checkpoints import oracle_inputs, save_checkpoint
from tests.llava_files import write_image, write_json
from tests.media_files import clip_frames, truncate, write_clip, write_tone


def record(record_id, question: str, answer: str = "red", **media) -> dict:
    turns = [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    return {"id": record_id, **media, "conversations": turns}


@pytest.fixture
def media(tmp_path):
    """A media root with a red image, an mp4 clip of 6 frames, a webm one and a wav tone."""
    root = tmp_path / "media"
    write_image(root / "red.png", "red")
    write_clip(root / "clips/move.mp4", frames=6)
    write_clip(root / "clips/move.webm", frames=6)
    write_tone(root / "sounds/tone.wav")
    return root


def build(tmp_path, root, train: list[dict], test: list[dict] | None = None, **settings) -> LLaVAStream:
    test = test or [{"question_id": "q0", "video": "clips/move.mp4", "text": "what moves ?", "answer": "red"}]
    files = TaskFiles(
        "av", write_json(tmp_path / "train.json", train), write_json(tmp_path / "test.json", test)
    )
    return LLaVAStream(tasks=[files], media_root=str(root), **settings)


def error_of(tmp_path, root, train, test=None, **settings) -> str:
    with pytest.raises(ValueError) as error:
        build(tmp_path, root, train, test, **settings)
    return str(error.value)


def test_a_clip_decodes_to_the_frames_transformers_own_pyav_reader_gives(media):
    ours = decode_clip(media / "clips/move.mp4")
    theirs, metadata = load_video(str(media / "clips/move.mp4"), backend="pyav")
    assert np.array_equal(ours, theirs) and ours.shape == (6, 56, 56, 3)
    assert np.array_equal(decode_clip(media / "clips/move.mp4", [1, 4]), theirs[[1, 4]])
    assert clip_metadata(media / "clips/move.mp4").total_num_frames == metadata.total_num_frames == 6


def test_a_webm_clip_whose_header_counts_no_frames_is_counted_and_decoded(media):
    """WebM keeps no frame count in its header; transformers' PyAV reader then reads none."""
    assert clip_metadata(media / "clips/move.webm").total_num_frames == 6
    frames = decode_clip(media / "clips/move.webm")
    assert frames.shape == (6, 56, 56, 3)
    # The bar moves: lossy, but each frame is brightest where its frame of the source is.
    assert [int(f.sum(axis=(0, 2)).argmax()) // 3 for f in frames] == list(range(6))


def test_a_directory_of_frames_is_a_clip_in_name_order(tmp_path):
    frames = clip_frames(4, 16, seed=1)
    for i, frame in enumerate(frames):
        (tmp_path / "clip").mkdir(exist_ok=True)
        Image.fromarray(frame).save(tmp_path / f"clip/{i:03d}.png")
    clip, metadata = load_clip(Video(tmp_path / "clip"))
    assert np.array_equal(clip, frames) and metadata.total_num_frames == 4 and metadata.fps is None


def test_a_sound_is_resampled_to_the_rate_the_model_reads_as_transformers_does(media):
    sound = media / "sounds/tone.wav"
    ours = load_waveform(sound, 16000)
    assert len(ours) == 2 * soundfile.info(sound).frames  # 8 kHz read at 16 kHz: never left as it was
    assert np.array_equal(ours, load_audio(str(sound), sampling_rate=16000, backend="soundfile"))


def test_records_may_read_a_clip_a_sound_or_an_image_and_a_sound(tmp_path, media):
    train = [
        record("v", "<video>\nwhat moves ?", video="clips/move.mp4"),
        record("a", "what is heard ? <audio>", audio="sounds/tone.wav"),
        record("ia", "<image>\n<audio>\nwhat colour ?", image="red.png", audio="sounds/tone.wav"),
        record("d", "<video>\nwhat moves ?", video="clips/move.webm"),
    ]
    test = [{"question_id": "q0", "video": "clips/move.mp4", "text": "what moves ?", "answer": "red"}]
    stream = build(tmp_path, media, train, test, num_frames=4)
    samples = [stream.tasks[0].train[i] for i in range(4)]
    assert samples[0]["video"] == Video(media / "clips/move.mp4", num_frames=4)
    assert samples[1]["audio"] == media / "sounds/tone.wav" and "video" not in samples[1]
    assert samples[2]["image"].size == (8, 8) and samples[2]["audio"] == media / "sounds/tone.wav"
    # A CoIN question gets the placeholder of its clip in front, as an image's.
    assert stream.tasks[0].test[0]["question"] == "<video>\nwhat moves ?"
    read = [[m for m in ("image", "video", "audio") if m in sample] for sample in samples]
    assert read == [["video"], ["audio"], ["image", "audio"], ["video"]]
    # The clips and sounds count in the run's fingerprint as images do.
    assert set(stream.tasks[0].train.image_stamps()) == {
        str(media / name) for name in ("clips/move.mp4", "sounds/tone.wav", "red.png", "clips/move.webm")
    }


def test_image_root_is_media_roots_earlier_name(tmp_path, media):
    train = [record("v", "<video>\nwhat moves ?", video="clips/move.mp4")]
    files = TaskFiles("av", write_json(tmp_path / "t.json", train), write_json(tmp_path / "t.json", train))
    assert len(LLaVAStream(tasks=[files], image_root=str(media)).tasks[0].train) == 1
    with pytest.raises(ValueError, match="media_root .* and image_root .* differ"):
        LLaVAStream(tasks=[files], media_root=str(media), image_root=str(tmp_path))


BAD = {
    "truncated mp4": (
        lambda root: truncate(write_clip(root / "cut.mp4", frames=30)),
        record("x", "<video>\nwhat moves ?", video="cut.mp4"),
        "(id 'x'): field 'video': {root}/cut.mp4 is not a readable video",
    ),
    "empty wav": (
        lambda root: soundfile.write(root / "empty.wav", np.zeros(0, np.float32), 8000),
        record("x", "<audio>\nwhat is heard ?", audio="empty.wav"),
        "(id 'x'): field 'audio': {root}/empty.wav is an empty sound (no samples)",
    ),
    "truncated wav": (
        lambda root: truncate(write_tone(root / "cut.wav")),
        record("x", "<audio>\nwhat is heard ?", audio="cut.wav"),
        "(id 'x'): field 'audio': {root}/cut.wav is truncated: its header counts",
    ),
    "missing placeholder": (
        lambda root: None,
        record("x", "what moves ?", video="clips/move.mp4"),
        "(id 'x'): field 'conversations', first human turn: the question has no <video> placeholder",
    ),
    "placeholder without its file": (
        lambda root: None,
        record("x", "<video>\n<audio>\nwhat moves ?", video="clips/move.mp4"),
        (
            "(id 'x'): field 'conversations', first human turn: the question holds <audio> but the "
            "record has no 'audio' file"
        ),
    ),
    "a sound given as the video": (
        lambda root: None,
        record("x", "<video>\nwhat moves ?", video="sounds/tone.wav"),
        "(id 'x'): field 'video': 'sounds/tone.wav' is not a video file (its name says audio)",
    ),
    "fewer frames than asked": (
        lambda root: None,
        record("x", "<video>\nwhat moves ?", video="clips/move.mp4"),
        "(id 'x'): field 'video': {root}/clips/move.mp4 has 6 frames, fewer than num_frames 8",
    ),
    "an empty directory of frames": (
        lambda root: (root / "frames").mkdir(),
        record("x", "<video>\nwhat moves ?", video="frames"),
        "(id 'x'): field 'video': {root}/frames is a directory of frames without frames",
    ),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_media_are_named_with_the_file_and_the_record_before_training(tmp_path, media, case):
    write, bad, fragment = BAD[case]
    write(media)
    settings = {"num_frames": 8} if case == "fewer frames than asked" else {}
    good = record("ok", "<image>\nwhat colour ?", image="red.png")
    test = [{"question_id": "q0", "image": "red.png", "text": "what colour ?", "answer": "red"}]
    message = error_of(tmp_path, media, [good, bad], test, **settings)
    assert message.startswith(
        f"task 'av' train file {tmp_path / 'train.json'}: 1 invalid record(s):\n  record 1 "
    )
    assert fragment.format(root=media) in message


@pytest.mark.parametrize("kind", ["llava", "qwen2_audio"])
def test_a_clip_given_to_a_model_that_reads_no_video_is_refused_naming_the_sample(tmp_path, media, kind):
    stream = build(tmp_path, media, [record("v", "<video>\nwhat moves ?", video="clips/move.mp4")])
    model = build_model(ModelConfig(pretrained=str(save_checkpoint(kind, tmp_path / kind))), [])
    with pytest.raises(ValueError) as error:
        check_modalities(stream.tasks, model)
    assert f"task 'av' train sample 'v' reads video, which the {kind} checkpoint" in str(error.value)
    assert "families that read video: qwen2_vl, qwen2_5_vl, qwen3_vl" in str(error.value)


def test_the_assembled_model_refuses_a_sound_before_training(tmp_path, media, model):
    stream = build(tmp_path, media, [record("a", "<audio>\nwhat is heard ?", audio="sounds/tone.wav")])
    with pytest.raises(ValueError, match="sample 'a' reads audio, which the assembled model"):
        check_modalities(stream.tasks, model)


@pytest.mark.parametrize("kind", [kind for kind, family in FAMILIES.items() if "video" in family.modalities])
def test_a_streams_num_frames_reaches_a_whole_checkpoints_processor_as_its_own_sampling(
    tmp_path, media, kind
):
    """Given the stream's ``num_frames: 2``, a checkpoint reads what its processor makes of the
    whole decoded clip sampled to 2 frames (contmm decodes only those two)."""
    stream = build(
        tmp_path, media, [record("v", "<video>\nwhat moves ?", video="clips/move.mp4")], num_frames=2
    )
    model = build_model(ModelConfig(pretrained=str(save_checkpoint(kind, tmp_path / kind))), []).eval()
    samples = [stream.tasks[0].train[0]]
    ours = model.collator(train=False)(samples)
    prompt = {"with_answers": False, "add_generation_prompt": True}
    # fps=None: Qwen3-VL's processor has a default fps, and refuses num_frames beside it.
    theirs = oracle_inputs(model.processor, samples, **prompt, do_sample_frames=True, num_frames=2, fps=None)
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key
    unsampled = oracle_inputs(model.processor, samples, **prompt)  # the check can fail: more frames
    # InternVL and SmolVLM give a clip's frames in pixel_values, as images.
    key = "pixel_values_videos" if "pixel_values_videos" in ours else "pixel_values"
    assert unsampled[key].shape != ours[key].shape


def test_projector_expansion_on_a_whole_checkpoint_refuses_a_stream_with_clips(tmp_path, media):
    stream = build(tmp_path, media, [record("v", "<video>\nwhat moves ?", video="clips/move.mp4")])
    model = build_model(ModelConfig(pretrained=str(save_checkpoint("video_llava", tmp_path / "vl"))), [])
    with pytest.raises(
        ValueError, match="routes a whole checkpoint's images only; the stream has samples with video"
    ):
        ProjectorExpansion().setup(model, stream)
