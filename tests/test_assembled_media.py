"""The assembled model reads clips and sounds (``model.encoders``): each medium's placeholder
becomes its own tokens, a clip keeps its frames' order, a sound its window; a modality's
components are trained only in the stages whose data carry it; routing strategies that read
images only are refused for a stream with other media before the model is built."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch
from torch.utils.data import ConcatDataset

from contmm.model import MMLLM, EncoderConfig, ProjectorConfig
from contmm.model.collate import MEDIA_INPUTS
from contmm.model.media import Waveform, load_waveform
from contmm.model.mmllm import ModalityConfig
from contmm.model.modalities import freeze_absent_modalities, stream_modalities
from contmm.strategy import Strategies
from strategies.projector_expansion import ProjectorExpansion
from strategies.routed_lora import RoutedLoRA
from streams.synthetic_av import SyntheticAV
from tests.helpers import start, tiny_config, train_loader

TINY_WHISPER = {
    "model_type": "whisper",
    "d_model": 16,
    "encoder_layers": 1,
    "encoder_attention_heads": 2,
    "encoder_ffn_dim": 32,
    "decoder_layers": 1,
    "decoder_attention_heads": 2,
    "decoder_ffn_dim": 16,
    "num_mel_bins": 16,
    "max_source_positions": 4,
}
# A half-second window of 8 feature frames: the 4 positions of TINY_WHISPER.
FEATURES = {"sampling_rate": 8000, "chunk_length": 1, "hop_length": 1000, "n_fft": 1000}


def audio_config(**changes) -> EncoderConfig:
    settings = {"config": dict(TINY_WHISPER), "feature_extractor": dict(FEATURES), "drop_cls": False}
    return EncoderConfig(**{**settings, "feature_layer": -1, "freeze": False, **changes})


def av_config(**video):
    cfg = tiny_config()
    cfg.encoders = {
        "audio": ModalityConfig(encoder=audio_config(), input_projector=ProjectorConfig(kind="linear")),
        "video": ModalityConfig(input_projector=ProjectorConfig(kind="linear"), **video),
    }
    return cfg


@pytest.fixture
def av_stream() -> SyntheticAV:
    return SyntheticAV(
        tasks=["colour", "pitch", "direction"], train_size=8, test_size=4, pretrain_size=4, sampling_rate=8000
    )


@pytest.fixture
def av_model(av_stream) -> MMLLM:
    torch.manual_seed(0)
    return MMLLM.build(av_config(num_frames=4, pooled_frames=2), av_stream.texts()).eval()


def test_each_medium_s_placeholder_becomes_its_own_tokens_and_input(av_stream, av_model):
    samples = [task.train[i] for task in av_stream.tasks for i in range(2)]
    batch = av_model.collator(train=True)(samples)
    # 4 frames pooled into 2 groups of the image's 4 patches; one token per Whisper position.
    assert av_model.num_media_tokens == {"image": 4, "video": 8, "audio": 4}
    assert batch["pixel_values"].shape[0] == 2 and batch["video_pixel_values"].shape[:2] == (2, 4)
    assert batch["audio_features"].shape == (2, 16, 8)
    for modality, token_id in av_model.placeholder_ids.items():
        per_row = (batch["input_ids"] == token_id).sum(1).tolist()
        carriers = [int(modality in s) for s in samples]
        assert per_row == [c * av_model.num_media_tokens[modality] for c in carriers]
    assert torch.isfinite(av_model(**batch).loss)


def test_a_clip_reaches_the_model_in_frame_order(av_stream, av_model):
    """Reversed in time, a clip gives other tokens (the groups keep their order); frames
    swapped inside one pooled group give the same (they are averaged)."""
    clip = av_model.preprocess_media("video", [av_stream.tasks[2].train[0]])
    with torch.no_grad():
        tokens = av_model.project("video", clip)
        assert not torch.allclose(tokens, av_model.project("video", clip.flip(1)), atol=1e-4)
        assert torch.allclose(tokens, av_model.project("video", clip[:, [1, 0, 2, 3]]), atol=1e-5)


def test_a_sound_longer_than_the_window_is_refused_naming_the_sample(av_model):
    sample = {"id": "long-1", "question": "<audio>\nhow high ?", "answer": "low"}
    sample["audio"] = Waveform(np.zeros(2 * 8000, np.float32), 8000)
    with pytest.raises(ValueError, match="sample 'long-1': the sound .* lasts 2.0 s, longer than the 1.0 s"):
        av_model.collator(train=True)([sample])


def test_a_sound_at_another_rate_is_resampled_as_transformers_resamples_a_file(tmp_path):
    rate = 11025
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)).astype(np.float32)
    soundfile.write(tmp_path / "tone.wav", tone, rate, subtype="FLOAT")
    in_memory = load_waveform(Waveform(tone, rate), 8000)
    assert len(in_memory) == 8000
    np.testing.assert_allclose(in_memory, load_waveform(tmp_path / "tone.wav", 8000), atol=1e-6)


@pytest.mark.parametrize(
    ("encoders", "message"),
    [
        ({"depth": ModalityConfig()}, r"model.encoders: \['depth'\]: the assembled model reads video, audio"),
        ({"video": ModalityConfig(encoder=audio_config())}, "video frames are read by model.encoder"),
        ({"audio": ModalityConfig()}, "sound needs an audio encoder"),
        ({"audio": ModalityConfig(encoder=audio_config(drop_cls=True))}, "features have no CLS token"),
        (
            {
                "audio": ModalityConfig(
                    encoder=audio_config(feature_extractor={**FEATURES, "hop_length": 500})
                )
            },
            "the encoder reads 8 feature frames, its feature extractor gives 16",
        ),
        ({"video": ModalityConfig(num_frames=2, pooled_frames=3)}, "pooled_frames .3. must be between 1"),
        (
            {"audio": ModalityConfig(encoder=audio_config(), num_frames=4)},
            "num_frames and pooled_frames are video",
        ),
    ],
)
def test_a_wrong_media_encoder_setting_is_refused_naming_it(av_stream, encoders, message):
    cfg = tiny_config()
    cfg.encoders = encoders
    with pytest.raises(ValueError, match=message):
        MMLLM.build(cfg, av_stream.texts())


def test_a_modality_s_components_train_only_in_stages_whose_data_carry_it(av_stream, av_model):
    image, sound, clip = (task.train for task in av_stream.tasks)
    av_model.set_trainable(av_model.configured_trainable())
    assert freeze_absent_modalities(av_model, image) == [
        "video_projector",
        "audio_encoder",
        "audio_projector",
    ]
    av_model.set_trainable(av_model.configured_trainable())
    # A clip stage with replayed sounds trains the sound's components too, not the image's projector.
    assert freeze_absent_modalities(av_model, ConcatDataset([clip, sound])) == ["input_projector"]
    assert all(p.requires_grad for p in av_model.audio_projector.parameters())


def test_a_batch_without_a_medium_gives_its_trainable_components_zero_gradients(av_stream, av_model):
    """DDP needs a gradient for every trainable weight in every step; the loss is unchanged."""
    av_model.set_trainable(av_model.configured_trainable())
    batch = av_model.collator(train=True)([av_stream.tasks[1].train[i] for i in range(2)])
    assert MEDIA_INPUTS["video"] not in batch
    loss = av_model(**batch).loss
    loss.backward()
    assert all(p.grad is not None and not p.grad.any() for p in av_model.video_projector.parameters())
    assert all(p.grad is not None and not p.grad.any() for p in av_model.input_projector.parameters())
    assert any(p.grad.any() for p in av_model.audio_projector.parameters())
    with torch.no_grad():
        media = {k: v for k, v in batch.items() if k != "pixel_values"}
        plain = av_model.backbone.lm(
            inputs_embeds=av_model.embed(
                batch["input_ids"], batch["pixel_values"], audio_features=batch["audio_features"]
            ),
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
        ).loss
    assert media and torch.equal(loss.detach(), plain)


def test_routed_lora_with_image_keys_is_refused_for_a_stream_with_other_media(av_stream):
    media = stream_modalities(av_stream)
    assert media == {"image", "audio", "video"}
    with pytest.raises(ValueError, match="strategy RoutedLoRA handles samples with image only"):
        Strategies([RoutedLoRA(image_weight=1.0)]).check_media(media)
    Strategies([RoutedLoRA(image_weight=0.0), ProjectorExpansion()]).check_media(media)


def test_projector_expansion_gives_each_medium_a_projector_per_task_routed_by_the_instruction(
    av_stream, av_model
):
    strategy = ProjectorExpansion(image_weight=0.0)
    strategy.setup(av_model, av_stream)
    for task_id, task in enumerate(av_stream.tasks):
        start(av_model, strategy, task_id)
        strategy.after_task(av_model, task_id, train_loader(av_model, task, size=8))
    for name in ("input_projector", "video_projector", "audio_projector"):
        assert len(getattr(av_model, name).projectors) == 3
    sounds = av_model.collator(train=False)([av_stream.tasks[1].test[i] for i in range(4)])
    with torch.no_grad(), strategy.eval_context(av_model, 1, sounds):
        routed = av_model.project("audio", sounds["audio_features"])
        assert av_model.audio_projector.route.tolist() == [1, 1, 1, 1]
    own = av_model.audio_projector.projectors[1](av_model.audio_encoder(sounds["audio_features"]))
    assert torch.equal(routed, own)
    assert strategy.evaluation_report(av_model)["routing_accuracy"]["pitch"] == 1.0


def test_the_synthetic_sounds_and_clips_hold_what_their_answers_say():
    stream = SyntheticAV(
        tasks=["pitch", "sweep", "beeps", "appear", "direction", "speed"], train_size=12, test_size=2
    )
    pitch, sweep, beeps, appear, direction, speed = (task.train for task in stream.tasks)
    rate = 16000

    def peak_hz(samples: np.ndarray) -> float:
        return float(np.argmax(np.abs(np.fft.rfft(samples))) * rate / len(samples))

    for i in range(len(pitch)):
        sample = pitch[i]
        assert (peak_hz(sample["audio"].samples) > 1500) == (sample["answer"] == "high")
        wave = sweep[i]["audio"].samples
        loud = np.flatnonzero(np.abs(wave) > 0.1)
        first, last = wave[loud[0] : loud[0] + 1600], wave[loud[-1] - 1600 : loud[-1]]
        assert (peak_hz(last) > peak_hz(first)) == (sweep[i]["answer"] == "rising")
        loud = (
            np.convolve(np.abs(beeps[i]["audio"].samples), np.ones(80) / 80, "same") > 0.05
        )  # 5 ms envelope
        bursts = np.flatnonzero(loud[1:] & ~loud[:-1]).size + int(loud[0])
        assert bursts == ["one", "two", "three", "four"].index(beeps[i]["answer"]) + 1

    def occupied(frame: np.ndarray) -> set[int]:
        """The quadrants (0 1 / 2 3) with any drawn pixel."""
        half = frame.shape[0] // 2
        cells = [frame[r * half : (r + 1) * half, c * half : (c + 1) * half] for r in (0, 1) for c in (0, 1)]
        return {q for q, cell in enumerate(cells) if (cell != cell[0, 0]).any()}

    moves = {"right": (0, 1), "left": (0, -1), "down": (1, 0), "up": (-1, 0)}
    for i in range(len(appear)):
        frames = appear[i]["video"].frames
        assert occupied(frames[0]) == set() and len(occupied(frames[-1])) == 1
        frames = direction[i]["video"].frames
        (start,), (end,) = occupied(frames[0]), occupied(frames[-1])
        assert (end // 2 - start // 2, end % 2 - start % 2) == moves[direction[i]["answer"]]
        quadrants = set().union(*(occupied(frame) for frame in speed[i]["video"].frames))
        assert len(quadrants) == (2 if speed[i]["answer"] == "fast" else 1)
    again = SyntheticAV(tasks=["pitch", "appear"], train_size=12, test_size=2)
    assert np.array_equal(again.tasks[0].train[3]["audio"].samples, pitch[3]["audio"].samples)
    assert np.array_equal(again.tasks[1].train[3]["video"].frames, appear[3]["video"].frames)
