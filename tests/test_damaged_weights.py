"""Damaged model files, wherever weights are loaded from: a file cut short, a shard missing, a
JSON file that does not parse is one line naming the file, before any training. The models
are tiny ones saved by transformers and diffusers, damaged as a failed copy damages them."""

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from contmm.model import MMLLM, BackboneConfig, EncoderConfig, ModelConfig, build_model
from contmm.model.generator import GeneratorConfig, ModalityGenerator
from contmm.scoring.images import ClipScore
from streams.synthetic import SyntheticShapes
from tests.checkpoints import fit_config, llava_model, llava_processor, save_checkpoint
from tests.generators import save_pixel_generator, save_tiny_clip
from tests.helpers import fit_error, tiny_config, truncate

LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 168544\n"


def garbage(file: Path) -> None:
    file.write_text("garbage")


def lfs_pointer(file: Path) -> None:
    """What a clone without Git LFS holds in place of the weights."""
    file.write_text(LFS_POINTER)


def damaged_copy(source: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(source, tmp_path / source.name))


@pytest.fixture(scope="module")
def llava(tmp_path_factory) -> Path:
    return save_checkpoint("llava", tmp_path_factory.mktemp("models") / "llava")


@pytest.fixture(scope="module")
def components(tmp_path_factory) -> Path:
    """A tiny assembled model's encoder/, backbone/ and projector.safetensors, saved as
    tests/test_model.py's round trip saves them."""
    directory = tmp_path_factory.mktemp("components")
    torch.manual_seed(0)
    model = MMLLM.build(tiny_config(), SyntheticShapes(train_size=4, test_size=4, pretrain_size=4).texts())
    model.encoder.tower.save_pretrained(directory / "encoder")
    model.encoder.processor.save_pretrained(directory / "encoder")
    model.backbone.lm.save_pretrained(directory / "backbone")
    model.tokenizer.save_pretrained(directory / "backbone")
    save_file(model.input_projector.state_dict(), directory / "projector.safetensors")
    return directory


@pytest.fixture(scope="module")
def generator(tmp_path_factory) -> Path:
    """A pixel-space generator with its own text encoder and tokenizer."""
    return save_pixel_generator(tmp_path_factory.mktemp("models") / "generator")


def assembled(directory: Path) -> ModelConfig:
    cfg = tiny_config()
    return dataclasses.replace(
        cfg,
        encoder=EncoderConfig(pretrained=str(directory / "encoder"), feature_layer=-1),
        input_projector=dataclasses.replace(
            cfg.input_projector, pretrained=str(directory / "projector.safetensors")
        ),
        backbone=BackboneConfig(pretrained=str(directory / "backbone")),
    )


@pytest.mark.usefixtures("in_repo")
def test_a_truncated_checkpoint_stops_contmm_fit_with_one_line_naming_the_file(llava, tmp_path, capsys):
    checkpoint = damaged_copy(llava, tmp_path)
    truncate(checkpoint / "model.safetensors")
    out = tmp_path / "run"
    message = fit_error(capsys, "--config", fit_config(checkpoint, tmp_path), "--output_dir", str(out))
    error, hint = message.strip().splitlines()
    assert error.startswith(
        f"contmm: error: model.pretrained: {checkpoint / 'model.safetensors'} is truncated"
    )
    assert hint.startswith("(run `contmm --debug")
    assert not (out / "checkpoints").exists()


@pytest.mark.parametrize(
    ("name", "damage", "problem"),
    [
        ("config.json", truncate, "is not valid JSON"),
        ("tokenizer.json", truncate, "is not valid JSON"),
        ("processor_config.json", garbage, "is not valid JSON"),
        ("model.safetensors", lfs_pointer, "is a Git LFS pointer, not the weights"),
    ],
)
def test_a_damaged_file_of_a_whole_checkpoint_is_named(llava, tmp_path, name, damage, problem):
    checkpoint = damaged_copy(llava, tmp_path)
    damage(checkpoint / name)
    with pytest.raises(ValueError) as error:
        build_model(ModelConfig(pretrained=str(checkpoint)), [])
    assert str(error.value).startswith(f"model.pretrained: {checkpoint / name} {problem}")


def test_a_truncated_pickled_weight_file_is_named(llava, tmp_path):
    """``pytorch_model.bin`` (torch.save's zip archive), as older checkpoints ship their weights."""
    checkpoint = damaged_copy(llava, tmp_path)
    weights = checkpoint / "pytorch_model.bin"
    torch.save(load_file(checkpoint / "model.safetensors"), weights)
    (checkpoint / "model.safetensors").unlink()
    build_model(ModelConfig(pretrained=str(checkpoint)), [])  # whole, it loads
    truncate(weights)
    with pytest.raises(ValueError) as error:
        build_model(ModelConfig(pretrained=str(checkpoint)), [])
    assert str(error.value).startswith(
        f"model.pretrained: {weights} is truncated or not a PyTorch weight file"
    )


def test_a_shard_listed_in_the_index_but_missing_is_named(tmp_path):
    checkpoint = tmp_path / "sharded"
    processor = llava_processor()
    llava_model(processor.tokenizer).save_pretrained(checkpoint, max_shard_size="40KB")
    processor.save_pretrained(checkpoint)
    shards = sorted(checkpoint.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2
    build_model(ModelConfig(pretrained=str(checkpoint)), [])  # whole, it loads
    shards[1].unlink()
    with pytest.raises(ValueError) as error:
        build_model(ModelConfig(pretrained=str(checkpoint)), [])
    assert str(error.value).startswith(
        f"model.pretrained: {checkpoint / 'model.safetensors.index.json'} lists shard(s) that are missing: "
        f"{shards[1].name} "
    )


@pytest.mark.parametrize(
    ("setting", "name"),
    [
        ("model.encoder.pretrained", "encoder/model.safetensors"),
        ("model.backbone.pretrained", "backbone/model.safetensors"),
        ("model.input_projector.pretrained", "projector.safetensors"),
    ],
)
def test_a_truncated_component_weight_file_is_named(components, tmp_path, setting, name):
    directory = damaged_copy(components, tmp_path)
    truncate(directory / name)
    with pytest.raises(ValueError) as error:
        MMLLM.build(assembled(directory), texts=[])
    assert str(error.value).startswith(f"{setting}: {directory / name} is truncated: ")


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("unet/diffusion_pytorch_model.safetensors", "is truncated: "),
        ("text_encoder/model.safetensors", "is truncated: "),
        ("tokenizer/tokenizer.json", "is not valid JSON"),
    ],
)
def test_a_damaged_file_of_a_generator_is_named(generator, tmp_path, name, problem):
    generator = damaged_copy(generator, tmp_path)
    truncate(generator / name)
    with pytest.raises(ValueError) as error:
        ModalityGenerator(GeneratorConfig(pretrained=str(generator)))
    assert str(error.value).startswith(f"model.generator.pretrained: {generator / name} {problem}")


def test_a_truncated_clip_scorer_is_named(tmp_path):
    clip = save_tiny_clip(tmp_path / "clip")
    truncate(clip / "model.safetensors")
    with pytest.raises(ValueError) as error:
        ClipScore(str(clip))
    assert str(error.value).startswith(f"eval.clip_model: {clip / 'model.safetensors'} is truncated: ")
