"""The generating half at work: from the LLM's signal-token states to images, in training
(the objectives of a generation sample) and in evaluation (batched, seeded sampling).

A model that generates has ``output_projector``, ``generator`` and ``signal_token_ids`` (the
``k`` signal tokens in order). A generation sample's answer is those ``k`` tokens; in
evaluation, once the LLM writes the first of them the rest are appended, as GILL does, and
the last hidden states at the ``k`` tokens are projected into the generator's conditioning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from contmm.model.collate import pad_tokens

if TYPE_CHECKING:
    from contmm.model.components import ComponentModel


def conditioning(model: ComponentModel, hidden: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """The Output Projector applied to the last hidden states at each row's ``k`` signal tokens."""
    signal = torch.isin(input_ids, torch.tensor(model.signal_token_ids, device=input_ids.device))
    k = len(model.signal_token_ids)
    counts = signal.sum(dim=1)
    if bool((counts != k).any()):
        raise ValueError(
            f"a generation sequence must hold the {k} signal tokens once each; found {counts.tolist()}"
        )
    states = hidden[signal].view(len(input_ids), k, -1)
    return model.output_projector(states.to(next(model.output_projector.parameters()).dtype))


def generation_loss(
    model: ComponentModel,
    hidden: torch.Tensor,
    input_ids: torch.Tensor,
    generation_rows: torch.Tensor,
    caption_ids: torch.Tensor | None = None,
    target_pixels: torch.Tensor | None = None,
) -> torch.Tensor:
    """The weighted alignment and denoising losses of a batch's generation samples (rows)."""
    cfg = model.cfg.output_projector
    projected = conditioning(model, hidden[generation_rows], input_ids[generation_rows])
    loss = projected.new_zeros(())
    if cfg.alignment_weight > 0:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not model.cfg.generator.freeze):
            target = model.generator.encode_captions(caption_ids)
        loss = loss + cfg.alignment_weight * F.mse_loss(projected, target.to(projected.dtype))
    if cfg.denoising_weight > 0:
        loss = loss + cfg.denoising_weight * model.generator.denoising_loss(projected, target_pixels)
    return loss


@torch.no_grad()
def generate_images(
    model: ComponentModel, batch: dict, max_new_tokens: int, noise: list[torch.Generator]
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Greedy decoding of the prompts, then an image for every row whose answer starts its
    signal tokens: all of them denoised together, row ``i`` from ``noise[i]``. Returns the
    new tokens and ``{row: image in [0, 1]}`` (a row that wrote no signal token has none)."""
    new_tokens = model.generate(batch, max_new_tokens)
    first, signal = model.signal_token_ids[0], model.signal_token_ids
    rows, sequences = [], []
    for row, (prompt, mask, answer) in enumerate(
        zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist(), new_tokens.tolist())
    ):
        prompt = [t for t, m in zip(prompt, mask) if m]
        # Every row gets its signal tokens, so that the conditioning comes in batch order (a
        # routed Output Projector reads a route per batch row); only the rows that wrote
        # <gen_0> are drawn, and the extra rows cost one LLM pass, not sampling.
        drawn = first in answer
        sequences.append(prompt + (answer[: answer.index(first)] if drawn else []) + signal)
        if drawn:
            rows.append(row)
    if not rows:
        return new_tokens, {}
    padded = pad_tokens(sequences, model.tokenizer.pad_token_id, left=True)
    input_ids, attention_mask = (padded[k].to(new_tokens.device) for k in ("input_ids", "attention_mask"))
    pixel_values = batch["pixel_values"][:0]  # a generation prompt holds no image
    hidden = model.backbone.lm(
        inputs_embeds=model.embed(input_ids, pixel_values),
        attention_mask=attention_mask,
        output_hidden_states=True,
    ).hidden_states[-1]
    images = model.generator.sample(conditioning(model, hidden, input_ids)[rows], [noise[r] for r in rows])
    return new_tokens, dict(zip(rows, images))
