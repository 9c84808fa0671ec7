"""The five-component model (understanding path): building, the loss mask, generation."""

import dataclasses

import pytest
import torch
from safetensors.torch import save_file

from contmm.model import MMLLM, BackboneConfig, EncoderConfig, model_inputs
from contmm.model.collate import IGNORE_INDEX, InstructionCollator
from tests.helpers import tiny_config


@pytest.mark.parametrize("kind", ["linear", "mlp", "resampler"])
def test_each_projector_kind_maps_images_to_backbone_embeddings(stream, kind):
    model = MMLLM.build(tiny_config(kind), stream.texts())
    pixels = model.encoder.preprocess([stream.tasks[0].test[i]["image"] for i in range(2)])
    tokens = model.project_images(pixels)
    # CLIP at 32 px / patch 16 gives 4 patch tokens (CLS dropped); the resampler gives its queries.
    assert tokens.shape == (2, 3 if kind == "resampler" else 4, model.backbone.hidden_size)
    assert model.num_image_tokens == tokens.shape[1]


def test_loss_is_computed_on_the_answer_tokens_only(model, stream):
    samples = [stream.tasks[0].train[i] for i in range(3)]
    batch = InstructionCollator(model, train=True)(samples)
    tok = model.tokenizer
    for row, sample in enumerate(samples):
        labelled = batch["labels"][row][batch["labels"][row] != IGNORE_INDEX].tolist()
        assert labelled == tok(" " + sample["answer"], add_special_tokens=False)["input_ids"] + [
            tok.eos_token_id
        ]
        # The labelled positions are exactly the end of the real (unpadded) sequence.
        length = int(batch["attention_mask"][row].sum())
        assert (batch["labels"][row][length - len(labelled) : length] != IGNORE_INDEX).all()
        assert (batch["labels"][row][length:] == IGNORE_INDEX).all()
    image_tokens = (batch["input_ids"] == model.image_token_id).sum(dim=1)
    assert image_tokens.tolist() == [model.num_image_tokens] * 3
    assert torch.isfinite(model(**batch).loss)


def test_every_answer_of_a_multi_turn_sample_is_labelled_and_no_question(model, stream):
    sample = {
        **stream.tasks[0].train[0],
        "followups": [
            {"question": "how many shapes ?", "answer": "two"},
            {"question": "and now ?", "answer": "red"},
        ],
    }
    batch = InstructionCollator(model, train=True)([sample])
    words = model.tokenizer.decode(batch["labels"][0][batch["labels"][0] != IGNORE_INDEX])  # with each eos
    assert words.split() == [sample["answer"], "</s>", "two", "</s>", "red", "</s>"]
    everything = model.tokenizer.decode(batch["input_ids"][0], skip_special_tokens=True)
    assert "how many shapes" in everything and everything.count("assistant") == 3  # lower-cased words


def test_a_prompt_without_the_image_placeholder_is_refused(model, stream):
    sample = dict(stream.tasks[0].train[0], question="what colour is it ?")
    with pytest.raises(ValueError, match="colour-train-0.*exactly one <image>"):
        InstructionCollator(model, train=True)([sample])


def test_batched_left_padded_generation_matches_one_sample_at_a_time(model, stream):
    # Different question templates give prompts of different lengths, so the batch is padded.
    samples = [stream.tasks[j].test[i] for j in range(2) for i in range(4)]
    collate = InstructionCollator(model, train=False)
    batch = collate(samples)
    assert (batch["attention_mask"][:, 0] == 0).any(), "the batch should need left padding"
    batched = model.generate(model_inputs(batch), 5)
    assert batched.shape[1] <= 5  # only the new tokens come back
    decode = model.tokenizer.batch_decode
    singles = []
    for sample in samples:
        one = collate([sample])
        singles += decode(model.generate(model_inputs(one), 5), skip_special_tokens=True)
    assert decode(batched, skip_special_tokens=True) == singles


def test_pretrained_components_round_trip_through_a_local_directory(model, stream, tmp_path):
    """`pretrained:` loads what `save_pretrained` wrote: same weights, same tokenizer, same outputs."""
    model.encoder.tower.save_pretrained(tmp_path / "encoder")
    model.encoder.processor.save_pretrained(tmp_path / "encoder")
    model.backbone.lm.save_pretrained(tmp_path / "backbone")
    model.tokenizer.save_pretrained(tmp_path / "backbone")
    save_file(model.input_projector.state_dict(), tmp_path / "projector.safetensors")

    cfg = tiny_config()
    cfg = dataclasses.replace(
        cfg,
        encoder=EncoderConfig(pretrained=str(tmp_path / "encoder"), feature_layer=-1),
        input_projector=dataclasses.replace(
            cfg.input_projector, pretrained=str(tmp_path / "projector.safetensors")
        ),
        backbone=BackboneConfig(pretrained=str(tmp_path / "backbone")),
    )
    loaded = MMLLM.build(cfg, texts=[]).eval()

    assert loaded.tokenizer.get_vocab() == model.tokenizer.get_vocab()
    batch = InstructionCollator(model, train=True)([stream.tasks[1].train[i] for i in range(2)])
    again = InstructionCollator(loaded, train=True)([stream.tasks[1].train[i] for i in range(2)])
    for key in ("input_ids", "labels", "pixel_values"):
        assert torch.equal(batch[key], again[key])
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, loaded(**again).logits, atol=1e-6)


def test_set_trainable_freezes_every_other_component(model):
    model.set_trainable(["input_projector"])
    assert all(p.requires_grad for p in model.input_projector.parameters())
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert not any(p.requires_grad for p in model.backbone.parameters())
    with pytest.raises(ValueError, match="projector"):
        model.set_trainable(["projector"])


def test_a_trained_encoder_leaves_frozen_what_the_features_read_do_not_depend_on(stream):
    """LLaVA reads the penultimate layer: the last layer and the pooled output's norm get no
    gradient, and a trainable parameter without one stops DDP at its second step."""
    cfg = tiny_config()
    cfg = dataclasses.replace(cfg, encoder=dataclasses.replace(cfg.encoder, feature_layer=-2))
    cfg.encoder.config["num_hidden_layers"] = 2
    model = MMLLM.build(cfg, stream.texts())
    model.set_trainable(["encoder", "input_projector", "backbone"])
    batch = InstructionCollator(model, train=True)([stream.tasks[0].train[i] for i in range(4)])
    model(**batch).loss.backward()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {
        n
        for n, _ in model.named_parameters()
        if n.startswith(("encoder.tower.post_layernorm.", "encoder.tower.encoder.layers.1."))
    }
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_a_checkpoint_that_ships_its_own_code_is_refused_unless_trusted(model, stream, tmp_path):
    """trust_remote_code is off by default: a repository's own modelling code never runs."""
    marker = tmp_path / "code_ran"
    repo = tmp_path / "custom"
    model.tokenizer.save_pretrained(repo)
    (repo / "config.json").write_text(
        '{"model_type": "custom_llm", "auto_map": {"AutoConfig": "configuration_custom.CustomConfig",'
        ' "AutoModelForCausalLM": "modeling_custom.CustomModel"}}'
    )
    code = f"open({str(marker)!r}, 'w').write('ran')\n"
    (repo / "configuration_custom.py").write_text(code)
    (repo / "modeling_custom.py").write_text(code)
    cfg = tiny_config()
    cfg.backbone = BackboneConfig(pretrained=str(repo))
    with pytest.raises(ValueError, match="trust_remote_code"):
        MMLLM.build(cfg, stream.texts())
    assert not marker.exists()
