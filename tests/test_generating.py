"""The generating half on the assembled model: signal tokens, the Output Projector's
objectives, and batched seeded image generation in evaluation."""

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from contmm.model import MMLLM, ModelConfig, build_model
from contmm.model.collate import IGNORE_INDEX, InstructionCollator
from contmm.model.generating import conditioning, generate_images
from contmm.model.generator import GeneratorConfig
from contmm.model.output_projector import OutputProjectorConfig
from contmm.rundir.fingerprint import changed_input, run_inputs
from contmm.scoring.images import image_path
from strategies.ewc import EWC
from strategies.lora_per_task import LoRAPerTask
from strategies.projector_expansion import ProjectorExpansion
from strategies.replay import Replay
from streams.synthetic import SyntheticShapes
from tests.generators import CAPTION_LENGTH, WIDTH, save_pixel_generator
from tests.helpers import start, tiny_config, train_steps


@pytest.fixture(scope="module")
def generator_dir(tmp_path_factory):
    return save_pixel_generator(tmp_path_factory.mktemp("generator"))


@pytest.fixture
def any2any():
    return SyntheticShapes(
        tasks=["colour", "draw_colour", "draw_position"], train_size=8, test_size=4, pretrain_size=4
    )


def drawing_model(stream, generator_dir, **projector) -> MMLLM:
    torch.manual_seed(0)
    cfg = replace(
        tiny_config(),
        output_projector=OutputProjectorConfig(**{"num_heads": 2, **projector}),
        generator=GeneratorConfig(pretrained=str(generator_dir), num_inference_steps=3),
    )
    return MMLLM.build(cfg, stream.texts()).eval()


def mixed_batch(model, stream):
    samples = [stream.tasks[0].train[0], stream.tasks[1].train[0], stream.tasks[2].train[1]]
    return samples, InstructionCollator(model, train=True)(samples)


def test_a_generation_sample_answers_with_the_signal_tokens_and_has_no_input_image(any2any, generator_dir):
    model = drawing_model(any2any, generator_dir)
    samples, batch = mixed_batch(model, any2any)
    assert batch["pixel_values"].shape[0] == 1  # the colour question's image only
    assert batch["generation_rows"].tolist() == [1, 2]
    answer = batch["labels"][1][batch["labels"][1] != IGNORE_INDEX].tolist()
    assert answer == model.signal_token_ids + [model.tokenizer.eos_token_id]
    assert model.tokenizer.convert_ids_to_tokens(model.signal_token_ids) == [f"<gen_{i}>" for i in range(4)]
    assert batch["caption_ids"].shape == (2, CAPTION_LENGTH)
    assert (
        model.generator.tokenizer.decode(batch["caption_ids"][0], skip_special_tokens=True)
        == samples[1]["caption"]
    )


def test_the_loss_adds_the_alignment_to_the_generators_caption_encoding(any2any, generator_dir):
    model = drawing_model(any2any, generator_dir, alignment_weight=0.5)
    _, batch = mixed_batch(model, any2any)
    loss = model(**batch).loss
    lm = model.backbone.lm(
        inputs_embeds=model.embed(batch["input_ids"], batch["pixel_values"]),
        attention_mask=batch["attention_mask"],
        labels=batch["labels"],
        output_hidden_states=True,
    )
    rows = batch["generation_rows"]
    projected = conditioning(model, lm.hidden_states[-1][rows], batch["input_ids"][rows])
    target = model.generator.text_encoder(batch["caption_ids"])[0]
    assert projected.shape == (2, CAPTION_LENGTH, WIDTH)
    assert torch.allclose(loss, lm.loss + 0.5 * F.mse_loss(projected, target), atol=1e-6)

    model.set_trainable(model.configured_trainable())
    model(**batch).loss.backward()
    assert all(p.grad is not None for p in model.output_projector.parameters())
    assert all(p.grad is None and not p.requires_grad for p in model.generator.parameters())  # frozen


def test_the_denoising_objective_trains_the_output_projector_through_the_frozen_unet(any2any, generator_dir):
    model = drawing_model(any2any, generator_dir, alignment_weight=0.0, denoising_weight=1.0)
    model.set_trainable(model.configured_trainable())
    _, batch = mixed_batch(model, any2any)
    assert batch["target_pixels"].shape == (2, 3, 16, 16) and "caption_ids" not in batch
    model(**batch).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.output_projector.parameters())


def test_an_image_is_drawn_for_each_prompt_that_writes_the_signal_tokens(any2any, generator_dir, monkeypatch):
    model = drawing_model(any2any, generator_dir)
    task = any2any.tasks[1]
    batch = InstructionCollator(model, train=False)([task.test[i] for i in range(3)])
    signal, eos = model.signal_token_ids, model.tokenizer.eos_token_id
    word = model.tokenizer.convert_tokens_to_ids("red")
    written = torch.tensor([[signal[0], eos, eos], [word, eos, eos], [word, signal[0], signal[1]]])
    monkeypatch.setattr(model, "generate", lambda batch, max_new_tokens: written)
    noise = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    _, images = generate_images(model, batch, 3, noise)
    assert sorted(images) == [0, 2]  # row 1 wrote no signal token: no image

    # Row 2's image is the generator's sample for the states of its prompt + "red" + signal tokens.
    prompt = batch["input_ids"][2][batch["attention_mask"][2] == 1].tolist()
    ids = torch.tensor([prompt + [word] + signal])
    hidden = model.backbone.lm(
        inputs_embeds=model.embed(ids, batch["pixel_values"]), output_hidden_states=True
    )
    alone = model.generator.sample(
        conditioning(model, hidden.hidden_states[-1], ids), [torch.Generator().manual_seed(3)]
    )
    assert torch.allclose(images[2], alone[0], atol=1e-5)


def test_model_draw_gives_the_generated_images_as_pictures_and_a_model_without_a_generator_refuses(
    any2any, generator_dir, model
):
    drawing = drawing_model(any2any, generator_dir)
    batch = InstructionCollator(drawing, train=False)([any2any.tasks[1].test[i] for i in range(2)])
    tokens, pixels = generate_images(drawing, batch, 3, [torch.Generator().manual_seed(s) for s in (1, 2)])
    drawn_tokens, pictures = drawing.draw(batch, 3, [torch.Generator().manual_seed(s) for s in (1, 2)])
    assert torch.equal(tokens, drawn_tokens) and sorted(pictures) == sorted(pixels)
    for row, picture in pictures.items():
        assert torch.equal(
            torch.from_numpy(np.asarray(picture)),
            (pixels[row].clamp(0, 1) * 255).round().byte().permute(1, 2, 0),
        )
    with pytest.raises(ValueError, match="MMLLM draws no images"):
        model.draw(batch, 3, [])


def test_a_generation_sample_for_a_model_without_a_generator_is_named(any2any, model):
    with pytest.raises(ValueError, match="draw_colour-train-0.*asks for an image"):
        InstructionCollator(model, train=True)([any2any.tasks[1].train[0]])


def test_an_mlp_output_projector_must_match_the_caption_length_to_align(any2any, generator_dir):
    with pytest.raises(ValueError, match=f"num_signal_tokens: {CAPTION_LENGTH}"):
        drawing_model(any2any, generator_dir, kind="mlp", num_signal_tokens=4)
    model = drawing_model(any2any, generator_dir, kind="mlp", num_signal_tokens=CAPTION_LENGTH)
    _, batch = mixed_batch(model, any2any)
    assert torch.isfinite(model(**batch).loss)


def test_ewcs_fisher_covers_the_output_projector_on_generation_samples(any2any, generator_dir):
    model = drawing_model(any2any, generator_dir)
    model.set_trainable(["output_projector"])
    collate = InstructionCollator(model, train=True)
    batches = [collate([any2any.tasks[1].train[i + 4 * b] for i in range(4)]) for b in range(2)]
    fisher = EWC(fisher_batches=2, fisher="batch").fisher(model, batches)
    assert set(fisher) == {f"output_projector.{n}" for n, _ in model.output_projector.named_parameters()}
    assert all(value.sum() > 0 for value in fisher.values())


def test_replay_memory_keeps_generation_samples_whole(any2any, generator_dir):
    replay = Replay(memory_size=4)
    replay.setup(drawing_model(any2any, generator_dir), any2any)
    replay.train_data(1, any2any.tasks[1].train)
    replay.after_task(None, 1, None)
    kept = [replay.train_data(2, any2any.tasks[2].train)[i] for i in range(8, 12)]
    assert all(
        sample["id"].startswith("draw_colour") and "target" in sample and "image" not in sample
        for sample in kept
    )


def test_lora_per_task_draws_with_each_tasks_adapter(any2any, generator_dir):
    model = drawing_model(any2any, generator_dir)
    model.cfg.backbone.freeze = True
    lora = LoRAPerTask(r=4, alpha=8)
    lora.setup(model, any2any)
    start(model, lora, 1)
    _, batch = mixed_batch(model, any2any)
    train_steps(model, batch, steps=3)  # the draw_colour adapter and the output projector learn
    assert any(".task_1." in n for n, p in model.named_parameters() if p.requires_grad)

    test = InstructionCollator(model, train=False)([any2any.tasks[1].test[i] for i in range(2)])
    signal = torch.tensor([model.signal_token_ids[:1]] * 2)
    model.generate = lambda batch, max_new_tokens: signal  # both prompts start to draw
    noise = lambda: [torch.Generator().manual_seed(s) for s in (0, 1)]
    with torch.no_grad(), lora.eval_context(model, 1, test):
        _, with_adapter = generate_images(model, test, 1, noise())
    with torch.no_grad(), model.backbone.lm.disable_adapter():  # the base LLM
        _, without = generate_images(model, test, 1, noise())
    assert sorted(with_adapter) == [0, 1]
    assert not torch.allclose(with_adapter[0], without[0])


def test_projector_expansion_gives_each_task_a_projector_pair_and_routes_drawings_by_their_words(
    any2any, generator_dir
):
    model = drawing_model(any2any, generator_dir)
    model.cfg.encoder.freeze = model.cfg.backbone.freeze = True
    expansion = ProjectorExpansion(image_weight=0.0)
    expansion.setup(model, any2any)
    collate = InstructionCollator(model, train=True)
    for task_id, task in enumerate(any2any.tasks):
        start(model, expansion, task_id)
        trainable = {
            n.split(".projectors.")[0] + f".{n.split('.')[2]}"
            for n, p in model.named_parameters()
            if p.requires_grad
        }
        assert trainable == {f"input_projector.{task_id}", f"output_projector.{task_id}"}
        batches = [collate([task.train[i] for i in range(8)])]
        train_steps(model, batches[0], steps=3)
        expansion.after_task(model, task_id, batches)
    assert len(model.output_projector.projectors) == len(model.input_projector.projectors) == 3
    # A generation task has no images: its image key is zero, near no sample.
    assert model.input_projector.image_keys[1:].abs().sum() == 0

    test = InstructionCollator(model, train=False)(
        [any2any.tasks[t].test[i] for t in (1, 2) for i in range(2)]
    )
    signal = torch.tensor([model.signal_token_ids[:1]] * 4)
    model.generate = lambda batch, max_new_tokens: signal  # every prompt starts to draw
    seen = []
    project = model.output_projector.forward
    model.output_projector.forward = lambda states: (
        seen.append((states, model.output_projector.route)) or project(states)
    )
    with torch.no_grad(), expansion.eval_context(model, 1, test):
        generate_images(model, test, 1, [torch.Generator().manual_seed(s) for s in range(4)])
    ((states, route),) = seen
    # Routed by the instruction's words alone, to the drawing tasks' own projectors here.
    assert route.tolist() == [1, 1, 2, 2]
    with torch.no_grad():
        model.output_projector.route = route
        routed = project(states)
        model.output_projector.route = None
        for row, task in enumerate(route.tolist()):
            assert torch.allclose(
                routed[row], model.output_projector.projectors[task](states[row : row + 1])[0], atol=1e-6
            )
    # Routing accuracy counts against the context's task (1): the two draw_position rows,
    # routed to their own task, are misses for draw_colour, so it is the routes that are counted.
    assert expansion.evaluation_report(model)["routing_accuracy"] == {"draw_colour": 0.5}


def test_a_generator_beside_a_whole_checkpoint_is_refused_not_ignored(generator_dir):
    cfg = ModelConfig(
        pretrained="some/llava",
        output_projector=OutputProjectorConfig(),
        generator=GeneratorConfig(pretrained=str(generator_dir)),
    )
    with pytest.raises(ValueError, match="does not generate images in contmm yet"):
        build_model(cfg, [])


def test_image_files_of_two_sample_ids_never_collide():
    assert image_path("draw", "draw-test-3") == "draw/draw-test-3.png"
    paths = {image_path("draw", i) for i in ("a/b", "a_b", "a b", "a:b")}
    assert len(paths) == 4 and all("/" not in p.removeprefix("draw/") for p in paths)


def test_an_edited_caption_changes_the_runs_data_fingerprint(any2any, model):
    before = run_inputs(any2any, model.tokenizer)
    split = any2any.tasks[1].train
    text = split.text
    split.text = lambda i: {**text(i), "caption": "an edited caption"} if i == 0 else text(i)
    after = run_inputs(any2any, model.tokenizer)
    assert changed_input(before, after) == "the data of task split 'draw_colour train'"
