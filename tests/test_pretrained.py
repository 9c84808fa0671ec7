"""Whole checkpoints (`model.pretrained`): every family saved by transformers, loaded the way a
user loads them, with transformers' own model classes as the oracle, on every modality the
family reads."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForMultimodalLM, AutoProcessor, LlamaConfig

from contmm.cli import main
from contmm.model import BackboneConfig, ModelConfig, build_model, model_inputs
from contmm.model.collate import IGNORE_INDEX
from contmm.model.pretrained import FAMILIES
from strategies.ewc import EWC
from strategies.projector_expansion import ProjectorExpansion
from strategies.single_task import SingleTask
from tests.checkpoints import BUILDERS, fit_config, oracle_inputs, reference_answer, save_checkpoint
from tests.media_files import as_modality, write_tone

KINDS = list(BUILDERS)
# Every family with every modality it reads: the fidelity tests run on each.
READINGS = [(kind, modality) for kind in KINDS for modality in FAMILIES[kind].modalities]


def test_every_family_in_the_table_has_a_tiny_checkpoint_the_fidelity_tests_run_on():
    assert sorted(BUILDERS) == sorted(FAMILIES)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return {kind: save_checkpoint(kind, tmp_path_factory.mktemp(kind)) for kind in KINDS}


@pytest.fixture
def image_samples(stream):
    # Two tasks' questions: prompts of different lengths, so batches are padded; two samples
    # are conversations of two and three turns, whose every answer is trained on.
    samples = [stream.tasks[j].train[i] for j in range(2) for i in range(2)]
    samples[1]["followups"] = [{"question": "how many shapes are there ?", "answer": "two"}]
    samples[2]["followups"] = [
        {"question": "what colour ?", "answer": "red"},
        {"question": "and now ?", "answer": "blue"},
    ]
    return samples


@pytest.fixture
def samples(request, image_samples, tmp_path):
    """``image_samples`` in the modality the test reads: its ``modality`` parameter, or its
    family's first (clips and sounds of differing lengths, written to ``tmp_path``)."""
    params = request.node.callspec.params
    modality = params.get("modality", FAMILIES[params["kind"]].modalities[0])
    return as_modality(image_samples, modality, tmp_path)


def oracle(directory):
    """The checkpoint as transformers alone loads it."""
    model = AutoModelForMultimodalLM.from_pretrained(directory).eval()
    return model, AutoProcessor.from_pretrained(directory)


def oracle_loss(reference, processor, samples) -> tuple[torch.Tensor, int]:
    """transformers' own loss on the samples' conversations (its chat template's assistant
    mask, ``{% generation %}`` in the tiny templates, gives the labels), and the labels counted."""
    inputs = oracle_inputs(
        processor,
        samples,
        with_answers=True,
        return_assistant_tokens_mask=True,
        processor_kwargs={"padding": True},
    )
    mask = inputs.pop("assistant_masks")
    labels = inputs["input_ids"].masked_fill(mask == 0, IGNORE_INDEX)
    with torch.no_grad():
        return reference(**inputs, labels=labels).loss, int(mask.sum())


@pytest.mark.parametrize(("kind", "modality"), READINGS)
def test_the_training_loss_is_the_checkpoints_own_loss_on_the_assistant_tokens(
    kind, modality, checkpoints, samples, tmp_path
):
    model = build_model(ModelConfig(pretrained=str(checkpoints[kind])), []).eval()
    batch = model.collator(train=True)(samples)
    with torch.no_grad():
        ours = model(**batch).loss
    reference, processor = oracle(checkpoints[kind])
    expected, labelled = oracle_loss(reference, processor, samples)
    assert int((batch["labels"] != IGNORE_INDEX).sum()) == labelled  # the same tokens, counted
    assert float(ours) == pytest.approx(float(expected), abs=1e-5)
    if modality != "image":  # the comparison sees the media: a clip or sound cut short differs
        cut, _ = oracle_loss(reference, processor, as_modality(samples, modality, tmp_path / "cut", cut=True))
        assert float(cut) != pytest.approx(float(expected), abs=1e-5)


@pytest.mark.parametrize(("kind", "modality"), READINGS)
def test_batched_predictions_equal_the_checkpoints_own_generate_sample_by_sample(
    kind, modality, checkpoints, stream, tmp_path
):
    model = build_model(ModelConfig(pretrained=str(checkpoints[kind])), []).eval()
    tests = as_modality([stream.tasks[j].test[i] for j in range(2) for i in range(3)], modality, tmp_path)
    batch = model.collator(train=False)(tests)
    assert (batch["attention_mask"][:, 0] == 0).any(), "the batch should need left padding"
    ours = model.tokenizer.batch_decode(model.generate(model_inputs(batch), 6), skip_special_tokens=True)

    reference, processor = oracle(checkpoints[kind])
    expected = [reference_answer(reference, processor, sample, 6) for sample in tests]
    assert ours == expected
    assert any(expected), "random weights still generate words: the comparison can fail"


def test_a_sound_longer_than_the_feature_extractors_window_is_an_error_not_cut(
    checkpoints, image_samples, tmp_path
):
    """The tiny Qwen2-Audio reads 2 s windows; its feature extractor would drop the rest of a
    longer sound without a word."""
    model = build_model(ModelConfig(pretrained=str(checkpoints["qwen2_audio"])), [])
    (sample,) = as_modality(image_samples[:1], "audio", tmp_path)
    sample["audio"] = write_tone(tmp_path / "long.wav", seconds=2.5)
    with pytest.raises(
        ValueError, match=r"lasts 2\.5 s, longer than the 2\.0 s the model's feature extractor"
    ):
        model.collator(train=True)([sample])
    sample["audio"] = write_tone(tmp_path / "whole.wav", seconds=2.0)  # exactly the window: read whole
    assert model.collator(train=True)([sample])["feature_attention_mask"].sum() == 200


def test_the_components_are_the_checkpoints_own_submodules_and_freeze_by_name(checkpoints):
    llava = build_model(ModelConfig(pretrained=str(checkpoints["llava"])), [])
    assert llava.encoder is llava.hf.model.vision_tower
    assert llava.input_projector is llava.hf.model.multi_modal_projector
    assert llava.backbone.lm is llava.hf.model.language_model and llava.backbone.lm_head is llava.hf.lm_head
    llava.set_trainable(llava.configured_trainable())  # LLaVA's defaults: the tower frozen
    assert not any(p.requires_grad for p in llava.encoder.parameters())
    assert all(p.requires_grad for p in llava.input_projector.parameters())
    assert all(p.requires_grad for p in llava.backbone.parameters())
    # Every weight belongs to exactly one component.
    owned = [
        id(t) for name in ("encoder", "input_projector", "backbone") for t in llava.component_tensors(name)
    ]
    assert sorted(owned) == sorted({id(p) for p in llava.parameters()} | {id(b) for b in llava.buffers()})

    # Qwen2-VL's projector (the patch merger) sits inside its vision tower.
    qwen = build_model(ModelConfig(pretrained=str(checkpoints["qwen2_vl"])), [])
    assert qwen.input_projector is qwen.hf.model.visual.merger
    qwen.set_trainable(["input_projector"])
    trainable = {n for n, p in qwen.named_parameters() if p.requires_grad}
    assert trainable and all(".visual.merger." in n for n in trainable)
    assert len(trainable) == len(list(qwen.input_projector.parameters()))


@pytest.mark.parametrize("kind", KINDS)
def test_a_trained_tower_gets_a_gradient_on_every_trainable_weight(kind, checkpoints, samples):
    """LLaVA reads its tower's penultimate layer: the last layer and the pooled-output norm
    stay frozen (a trainable weight without a gradient stops DDP at its second step);
    Qwen's merger reads the whole tower."""
    model = build_model(ModelConfig(pretrained=str(checkpoints[kind])), [])
    model.set_trainable(["encoder", "input_projector"])
    model(**model.collator(train=True)(samples)).loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    frozen = {n for n, t in model.encoder.named_parameters() if not t.requires_grad}
    # LLaVA, LLaVA-NeXT-Video and Video-LLaVA read the penultimate layer; LLaVA-OneVision the
    # last layer before its norm.
    penultimate = ("encoder.layers.1.", "post_layernorm.")
    unread = {
        "llava": penultimate,
        "llava_next_video": penultimate,
        "video_llava": penultimate,
        "llava_onevision": ("post_layernorm.",),
    }
    if kind in unread:
        assert frozen and all(n.startswith(unread[kind]) for n in frozen)
    else:
        assert not frozen


@pytest.mark.parametrize("kind", ["llava_next_video", "video_llava"])
def test_a_batch_of_clips_gives_the_weights_only_images_reach_zero_gradients(
    kind, checkpoints, image_samples, tmp_path
):
    """LLaVA-NeXT-Video's image_newline and Video-LLaVA's image tower get no gradient from
    clips; DDP needs one for every trainable weight in every step: zeros, the loss unchanged."""
    model = build_model(ModelConfig(pretrained=str(checkpoints[kind])), [])
    model.set_trainable(["encoder", "input_projector", "backbone"])
    batch = model.collator(train=True)(as_modality(image_samples, "video", tmp_path))
    loss = model(**batch).loss
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    if kind == "llava_next_video":
        images_only = [model.hf.get_parameter("model.image_newline")]
    else:
        images_only = [p for p in model.encoder.parameters() if p.requires_grad]
    assert images_only and not any(p.grad.any() for p in images_only)
    with torch.no_grad():
        assert torch.equal(loss.detach(), model.hf(**batch).loss)


def test_a_parameter_outside_every_component_counts_with_its_own(checkpoints, stream):
    """LLaVA-OneVision's image_newline sits on the model itself and counts with the input
    projector: trained, saved and restored (single-task reference) with it."""
    model = build_model(ModelConfig(pretrained=str(checkpoints["llava_onevision"])), [])
    newline = model.hf.get_parameter("model.image_newline")
    assert any(t is newline for t in model.component_tensors("input_projector"))
    model.set_trainable(["backbone"])
    assert not newline.requires_grad
    model.set_trainable(["input_projector"])
    assert newline.requires_grad
    reference = SingleTask()
    reference.setup(model, stream)
    start = newline.detach().clone()
    with torch.no_grad():
        newline.add_(1.0)
    reference.before_task(model, 1)
    assert torch.equal(newline, start)


def test_a_weight_that_does_not_load_is_an_error_naming_it(checkpoints, tmp_path):
    broken = save_checkpoint("llava", tmp_path / "llava")
    weights = load_file(broken / "model.safetensors")
    tower = [k for k in weights if "vision_tower" in k]
    save_file({k: v for k, v in weights.items() if k not in tower}, broken / "model.safetensors")
    with pytest.raises(ValueError, match=r"not every weight loaded \(missing_keys") as error:
        build_model(ModelConfig(pretrained=str(broken)), [])
    assert "vision_tower" in str(error.value)


def test_an_unsupported_architecture_is_named_with_the_supported_ones(tmp_path):
    LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'llama' are not supported; supported: llava, qwen2_vl, qwen2_5_vl"):
        build_model(ModelConfig(pretrained=str(tmp_path)), [])


@pytest.mark.parametrize("kind", KINDS)
def test_an_fp16_checkpoint_trains_its_trainable_components_in_float32(kind, checkpoints, samples):
    if FAMILIES[kind].features_in_tower_dtype:  # a frozen fp16 tower beside a float32 LLM fails there
        with pytest.raises(ValueError, match="give the tower and the LLM one dtype"):
            build_model(ModelConfig(pretrained=str(checkpoints[kind]), dtype="float16"), [])
        return
    model = build_model(ModelConfig(pretrained=str(checkpoints[kind]), dtype="float16"), [])
    model.set_trainable(model.configured_trainable())
    encoder = [t for t in model.component_tensors("encoder") if isinstance(t, torch.nn.Parameter)]
    assert {p.dtype for p in encoder} == {torch.float16}  # frozen: as loaded
    assert {p.dtype for n in ("input_projector", "backbone") for p in model.components()[n].parameters()} == {
        torch.float32
    }
    loss = model.train()(**model.collator(train=True)(samples)).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.input_projector.parameters())


def saved_activations(model, batch) -> int:
    """How many tensors autograd keeps for the backward pass of one training forward."""
    count = 0

    def pack(tensor):
        nonlocal count
        count += 1
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(**batch).loss.backward()
    return count


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_checkpointing_keeps_fewer_activations_and_the_same_gradients(kind, checkpoints, samples):
    counts, grads = {}, {}
    for checkpointing in (False, True):
        cfg = ModelConfig(pretrained=str(checkpoints[kind]), gradient_checkpointing=checkpointing)
        model = build_model(cfg, []).train()
        model.set_trainable(model.configured_trainable())
        counts[checkpointing] = saved_activations(model, model.collator(train=True)(samples))
        grads[checkpointing] = model.backbone.lm_head.weight.grad
    assert counts[True] < counts[False]
    torch.testing.assert_close(grads[True], grads[False])


@pytest.mark.slow
@pytest.mark.usefixtures("in_repo")
def test_fit_tunes_a_whole_checkpoint_with_lora_per_task(checkpoints, tmp_path):
    strategies = [{"class_path": "strategies.lora_per_task.LoRAPerTask"}]
    config = fit_config(
        checkpoints["llava"], tmp_path, model={"backbone": {"freeze": True}}, strategies=strategies
    )
    main(["fit", "--config", config, "--output_dir", str(tmp_path / "run")])
    results = json.loads((tmp_path / "run/results.json").read_text())
    assert results["stages_completed"] == 2 and all(v is not None for row in results["matrix"] for v in row)
    # The frozen LLM is not copied into the checkpoints: the adapters and the projector are.
    saved = torch.load(tmp_path / "run/checkpoints/stage_2/model.pt", weights_only=True)
    assert saved and all(".lora_" in k or "multi_modal_projector" in k for k in saved)


def test_ewc_estimates_its_fisher_and_penalty_on_a_whole_checkpoints_trainable_components(
    checkpoints, image_samples
):
    model = build_model(ModelConfig(pretrained=str(checkpoints["llava"])), [])
    model.set_trainable(["input_projector"])
    ewc = EWC(ewc_lambda=1.0, fisher_batches=1)
    ewc.after_task(model, 0, [model.collator(train=True)(image_samples)])
    (fisher,) = ewc.fishers
    assert set(fisher) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(".multi_modal_projector." in name for name in fisher) and any(f.any() for f in fisher.values())
    with torch.no_grad():
        model.input_projector.linear_1.weight.add_(0.1)
    assert float(ewc.penalty(model, None, None)) > 0


def fit_projector_expansion(checkpoint, tmp_path) -> tuple:
    """Two stages of projector expansion on ``checkpoint`` (frozen LLM, routing by instruction)."""
    strategy = {
        "class_path": "strategies.projector_expansion.ProjectorExpansion",
        "init_args": {"image_weight": 0},
    }
    config = fit_config(
        checkpoint, tmp_path, model={"backbone": {"freeze": True}}, strategies=[strategy],
        optimizer={"lr": 0.01}, trainer={"max_epochs": 2},
    )  # fmt: skip
    out = tmp_path / "run"
    main(["fit", "--config", config, "--output_dir", str(out)])
    return out, json.loads((out / "results.json").read_text())


@pytest.mark.slow
@pytest.mark.usefixtures("in_repo")
@pytest.mark.parametrize("kind", [kind for kind in KINDS if FAMILIES[kind].per_image_projector])
def test_projector_expansion_gives_every_per_image_projector_family_a_projector_per_task(
    kind, checkpoints, tmp_path
):
    out, results = fit_projector_expansion(checkpoints[kind], tmp_path)
    saved = torch.load(out / "checkpoints/stage_2/model.pt", weights_only=True)
    projector = FAMILIES[kind].input_projector.rsplit(".", 1)[-1]
    assert any(f"{projector}.projectors.1." in k for k in saved)
    # Routed without the task id, better than chance between the two tasks.
    accuracy = results["strategy_reports"][-1]["ProjectorExpansion"]["routing_accuracy"]
    assert accuracy.keys() == {"colour", "shape"} and min(accuracy.values()) > 0.5


@pytest.mark.slow
@pytest.mark.usefixtures("in_repo")
def test_projector_expansion_gives_a_llava_checkpoint_a_projector_per_task_routed_without_task_id(
    checkpoints, tmp_path
):
    out, results = fit_projector_expansion(checkpoints["llava"], tmp_path)
    last = results["strategy_reports"][-1]["ProjectorExpansion"]
    assert last["routing_accuracy"] == {"colour": 1.0, "shape": 1.0}
    # Everything colour is answered with is frozen after stage 1 and routed back to: tuning
    # shape, through its own projector, changes no colour answer and some shape answers.
    after = {s: (out / f"predictions/stage_{s}/colour.jsonl").read_text() for s in (1, 2)}
    assert after[1] == after[2]
    shape = {s: (out / f"predictions/stage_{s}/shape.jsonl").read_text() for s in (1, 2)}
    assert shape[1] != shape[2]
    saved = torch.load(out / "checkpoints/stage_2/model.pt", weights_only=True)
    assert any("multi_modal_projector.projectors.1." in k for k in saved)


@pytest.mark.parametrize("kind", [kind for kind in KINDS if not FAMILIES[kind].per_image_projector])
def test_projector_expansion_refuses_a_projector_that_does_not_map_each_image_alone(
    kind, checkpoints, stream
):
    model = build_model(ModelConfig(pretrained=str(checkpoints[kind])), [])
    with pytest.raises(ValueError, match="does not map each image on its own"):
        ProjectorExpansion().setup(model, stream)


def test_a_quantised_backbone_needs_a_frozen_llm_and_bitsandbytes_on_a_cuda_gpu(checkpoints):
    trained = ModelConfig(pretrained=str(checkpoints["llava"]), quantization="4bit")
    with pytest.raises(ValueError, match=r"model.quantization '4bit' quantises the LLM.*freeze: true"):
        build_model(trained, [])
    frozen = ModelConfig(
        pretrained=str(checkpoints["llava"]), quantization="8bit", backbone=BackboneConfig(freeze=True)
    )
    if not torch.cuda.is_available():  # this machine: the one-line reason, not a bitsandbytes traceback
        with pytest.raises(ValueError, match=r"needs bitsandbytes on a CUDA GPU, but no CUDA GPU is visible"):
            build_model(frozen, [])


def test_quantization_is_refused_for_an_assembled_model():
    with pytest.raises(ValueError, match=r"model.quantization apply to a whole checkpoint"):
        build_model(ModelConfig(quantization="4bit"), ["a b c"])
