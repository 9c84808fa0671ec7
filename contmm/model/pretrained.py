"""A whole multimodal checkpoint (LLaVA, Qwen2-VL, Qwen2-Audio, ... : :data:`FAMILIES`) as
contmm's model.

The checkpoint's own transformers model does the work, so transformers stays the
reference: its forward gives the loss, its ``generate`` the predictions, and its processor
builds the inputs (chat template, media-token expansion, image, video and audio
preprocessing). The survey's
components are views onto the checkpoint's own submodules, not copies, so ``freeze:``,
EWC and LoRA on the backbone act on the checkpoint itself.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers import AutoConfig, AutoModelForMultimodalLM, AutoProcessor

from contmm.model.chat import ChatCollator
from contmm.model.components import ComponentModel, model_inputs
from contmm.model.files import check_model_dir, loader_errors


@dataclass(frozen=True)
class Family:
    """Where a family's checkpoints keep the survey's components (attribute paths in its
    transformers model), whether its input projector maps each image's tokens on their
    own (``ComponentModel.per_image_projector``: projector expansion needs it), which
    fields of its ``get_image_features`` output the LLM reads (``encoder_probe``: a tower's
    weights that none of them depends on stay frozen when the tower is trained), and where
    its language model sits (the LLM Backbone with the ``lm_head``; LoRA adapters are
    addressed from there), and which modalities it reads (``image``, ``video``, ``audio``:
    its encoder reads them all)."""

    encoder: str
    input_projector: str
    modalities: tuple[str, ...] = ("image",)
    per_image_projector: bool = False
    image_features: tuple[str, ...] = ("pooler_output",)
    language_model: str = "model.language_model"
    # Parameters the checkpoint keeps outside every component's module, as (path, component)
    # pairs: each counts with its component (frozen, cast to float32, trained and saved with it).
    loose_parameters: tuple[tuple[str, str], ...] = ()
    # Whether the model casts its image features to its vision tower's dtype (not the text
    # embeddings') before placing them among the text embeddings: the tower and the LLM must
    # then have one dtype (SmolVLM / Idefics3 in transformers 5.25, issue #41453).
    features_in_tower_dtype: bool = False
    # Further Modality Encoders that read one modality each, as (modality, path) pairs (Video-LLaVA's
    # video tower beside its image tower): each is a component of its own, ``<modality>_encoder``,
    # frozen or trained as ``model.encoder`` says, and frozen in a stage whose data lack its
    # modality (a tower trained on a stage's images would get no gradient); ``encoder`` then reads
    # the family's other modalities.
    towers: tuple[tuple[str, str], ...] = ()


# One row per family, by its config's ``model_type``; a checkpoint of another type is refused
# naming these. The LLM's head is ``lm_head`` in every row.
FAMILIES = {
    "llava": Family("model.vision_tower", "model.multi_modal_projector", per_image_projector=True),
    # Qwen2-VL's merger reads the patches of all a batch's images as one sequence; its tower
    # reads a clip's frames as images, two at a time (temporal_patch_size).
    "qwen2_vl": Family("model.visual", "model.visual.merger", modalities=("image", "video")),
    "qwen2_5_vl": Family("model.visual", "model.visual.merger", modalities=("image", "video")),
    # Qwen3-VL's merger too reads all a batch's patches as one sequence. Its deepstack mergers
    # (intermediate vision layers added into the LLM's first layers) count with the encoder:
    # frozen or trained with it; the LLM reads their features beside the merger's.
    "qwen3_vl": Family(
        "model.visual",
        "model.visual.merger",
        modalities=("image", "video"),
        image_features=("pooler_output", "deepstack_features"),
    ),
    # Gemma 3's projector pools, norms and projects each image's patch grid on its own.
    "gemma3": Family("model.vision_tower", "model.multi_modal_projector", per_image_projector=True),
    # InternVL's MLP maps each row of pixel-shuffled features on its own, but a row is a tile:
    # its processor cuts an image into up to max_patches tiles and a thumbnail by default
    # (crop_to_patches), so the projector's rows are not the batch's images.
    # A clip's frames are images of one tile each, in pixel_values beside the images.
    "internvl": Family("model.vision_tower", "model.multi_modal_projector", modalities=("image", "video")),
    # LLaVA-OneVision's MLP too maps rows that are tiles: an image is its base tile and its
    # anyres grid's tiles, as many as the image's size picks (image_grid_pinpoints), so the
    # projector's rows are not the batch's images. ``image_newline``, a parameter of ``model``
    # itself, ends each row of an image's projected tile grid: a vector in the LLM's embedding
    # space that only the image path emits, so it counts with the input projector.
    # A clip's frames are single base tiles, their projected features pooled 2x2 (bilinear), one
    # image_newline after the clip.
    "llava_onevision": Family(
        "model.vision_tower",
        "model.multi_modal_projector",
        modalities=("image", "video"),
        loose_parameters=(("model.image_newline", "input_projector"),),
    ),
    # LLaVA-NeXT-Video: LLaVA-NeXT's anyres images (tiles, image_newline after each grid row, as
    # LLaVA-OneVision's) and a clip's frames average-pooled 2x2 (``model.vision_resampler``, no
    # weights in its average mode) before the same projector.
    "llava_next_video": Family(
        "model.vision_tower",
        "model.multi_modal_projector",
        modalities=("image", "video"),
        loose_parameters=(("model.image_newline", "input_projector"),),
    ),
    # Video-LLaVA: an image tower and a video tower (one CLIP config, separate weights), one
    # projector that maps each image's tokens on their own (and each clip's frames).
    "video_llava": Family(
        "model.image_tower",
        "model.multi_modal_projector",
        modalities=("image", "video"),
        per_image_projector=True,
        towers=(("video", "model.video_tower"),),
    ),
    # SmolVLM's connector pixel-shuffles and projects each row on its own, but as InternVL's a
    # row is a tile: its processor splits an image into tiles and a global view by default
    # (do_image_splitting). A clip's frames are global views, in pixel_values as images are. Its
    # LLM is the text model.
    "smolvlm": Family(
        "model.vision_model",
        "model.connector",
        modalities=("image", "video"),
        language_model="model.text_model",
        features_in_tower_dtype=True,
    ),
    # Qwen2-Audio: a Whisper-style encoder on log-mel features, a linear projector, Qwen2.
    "qwen2_audio": Family("model.audio_tower", "model.multi_modal_projector", modalities=("audio",)),
}
DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class LanguageBackbone(nn.Module):
    """The LLM Backbone of a whole checkpoint: its language model (``lm``, where LoRA goes)
    and its LM head."""

    def __init__(self, lm: nn.Module, lm_head: nn.Module) -> None:
        super().__init__()
        self.lm, self.lm_head = lm, lm_head

    @property
    def hidden_size(self) -> int:
        return self.lm_head.in_features


def load_checkpoint(cfg) -> tuple[nn.Module, object]:
    """The checkpoint's model and processor; any weight that does not load is an error."""
    path, remote = cfg.pretrained, cfg.trust_remote_code
    check_model_dir(path, "model.pretrained")
    with loader_errors("model.pretrained", path):
        model_type = AutoConfig.from_pretrained(path, trust_remote_code=remote).model_type
    if model_type not in FAMILIES:
        raise ValueError(
            f"model.pretrained {path}: checkpoints of type {model_type!r} are not supported; "
            f"supported: {', '.join(FAMILIES)} (or assemble the model from model.encoder, "
            "model.input_projector and model.backbone)"
        )
    quantization_config = quantization(cfg, model_type)
    with loader_errors("model.pretrained", path):
        model, report = AutoModelForMultimodalLM.from_pretrained(
            path,
            dtype=DTYPES[cfg.dtype],
            attn_implementation=cfg.attn_implementation,
            trust_remote_code=remote,
            output_loading_info=True,
            **quantization_config,
        )
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=remote)
    problems = {k: sorted(v) for k, v in report.items() if k != "error_msgs" and v}
    if problems or report.get("error_msgs"):
        details = "; ".join(f"{kind} {len(keys)}: {keys[:5]}" for kind, keys in problems.items())
        raise ValueError(
            f"model.pretrained {path}: not every weight loaded ({details or report['error_msgs']}): "
            "a weight left at random init would train and score silently wrong"
        )
    return model, processor


def quantization(cfg, model_type: str) -> dict:
    """``from_pretrained``'s quantization_config for ``model.quantization`` (QLoRA: the frozen
    LLM in 4 or 8 bit, everything else as loaded); an error where it cannot work."""
    if cfg.quantization is None:
        return {}
    if not cfg.backbone.freeze:
        raise ValueError(
            f"model.quantization {cfg.quantization!r} quantises the LLM, which then cannot be trained: "
            "set model.backbone.freeze: true and tune it with a LoRA strategy (QLoRA)"
        )
    if importlib.util.find_spec("bitsandbytes") is None or not torch.cuda.is_available():
        missing = "bitsandbytes is not installed" if torch.cuda.is_available() else "no CUDA GPU is visible"
        raise ValueError(
            f"model.quantization {cfg.quantization!r} needs bitsandbytes on a CUDA GPU, but {missing} "
            '(`pip install -e ".[qlora]"` on a GPU machine)'
        )
    from transformers import BitsAndBytesConfig

    family = FAMILIES[model_type]
    paths = (family.encoder, *(path for _, path in family.towers), family.input_projector)
    keep = ["lm_head", *(path.rsplit(".", 1)[-1] for path in paths)]
    if cfg.quantization == "8bit":
        return {"quantization_config": BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=keep)}
    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
            llm_int8_skip_modules=keep,
        )
    }


def _cast_inputs_to_parameters(module: nn.Module, args: tuple) -> tuple:
    """A trainable component kept in float32 behind a frozen half-precision one."""
    dtype = next(module.parameters()).dtype
    return tuple(a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


class PretrainedMMLLM(ComponentModel):
    """``model.pretrained``: one checkpoint, its components by name, its processor."""

    def __init__(self, cfg) -> None:
        super().__init__()
        self.cfg = cfg
        self.hf, self.processor = load_checkpoint(cfg)
        self.family = FAMILIES[self.hf.config.model_type]
        self.per_image_projector = self.family.per_image_projector
        self.modalities = self.family.modalities
        self.tokenizer = self.processor.tokenizer
        # The placeholder token routing leaves out of a sample's instruction (an image's; an
        # audio family's sound's).
        self.image_token_id = getattr(self.hf.config, "image_token_id", None) or self.hf.config.audio_token_id
        # A view, not a child module: the checkpoint (``hf``) owns every weight once.
        lm = self.hf.get_submodule(self.family.language_model)
        self.__dict__["backbone"] = LanguageBackbone(lm, self.hf.lm_head)
        for name in self.configured_trainable():
            self.components()[name].float()  # trained in float32, whatever the stored dtype
            for parameter in self.loose_parameters(name).values():
                parameter.data = parameter.data.float()
        self.check_one_dtype()
        self.input_projector.register_forward_pre_hook(_cast_inputs_to_parameters)
        if cfg.gradient_checkpointing:
            # Non-reentrant checkpointing needs no inputs that require grad, so the hook
            # transformers adds for that (also on a frozen vision tower) is taken off again.
            self.hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            self.hf.disable_input_require_grads()

    def check_one_dtype(self) -> None:
        """A family that casts image features to its tower's dtype fails in transformers at the
        first step when the tower and the LLM differ (a frozen half-precision tower beside a
        trained float32 LLM): refused here, with the settings that avoid it."""
        tower = next(self.encoder.parameters()).dtype
        text = self.backbone.lm.get_input_embeddings().weight.dtype
        if self.family.features_in_tower_dtype and tower != text:
            raise ValueError(
                f"model.pretrained {self.cfg.pretrained}: {self.hf.config.model_type} casts its image "
                f"features to its vision tower's dtype ({tower}) before placing them among the LLM's "
                f"embeddings ({text}), which fails in transformers: give the tower and the LLM one dtype "
                "(model.dtype float32; or train both, or neither: a frozen LLM tuned with LoRA)"
            )

    @property
    def encoder(self) -> nn.Module:
        return self.hf.get_submodule(self.family.encoder)

    @property
    def input_projector(self) -> nn.Module:
        return self.hf.get_submodule(self.family.input_projector)

    def towers(self) -> dict[str, nn.Module]:
        """The family's further Modality Encoders (``Family.towers``), by component name."""
        return {f"{modality}_encoder": self.hf.get_submodule(path) for modality, path in self.family.towers}

    def components(self) -> dict[str, nn.Module]:
        return {
            "encoder": self.encoder,
            **self.towers(),
            "input_projector": self.input_projector,
            "backbone": self.backbone,
        }

    def component_config(self, name: str):
        # Every vision tower is frozen or trained as model.encoder says.
        return self.cfg.encoder if name in self.towers() else super().component_config(name)

    def component_modalities(self) -> dict[str, set[str]]:
        own = {modality for modality, _ in self.family.towers}
        return {
            "encoder": set(self.modalities) - own,
            **{f"{modality}_encoder": {modality} for modality in own},
            "input_projector": set(self.modalities),
        }

    def loose_parameters(self, name: str) -> dict[str, nn.Parameter]:
        """The family's parameters outside every component's module that count with ``name``."""
        return {
            path: self.hf.get_parameter(path) for path, owner in self.family.loose_parameters if owner == name
        }

    def component_tensors(self, name: str) -> list[torch.Tensor]:
        return [*super().component_tensors(name), *self.loose_parameters(name).values()]

    def component_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        return {**super().component_state_dict(name), **self.loose_parameters(name)}

    def load_component_state_dict(self, name: str, state: dict[str, torch.Tensor]) -> None:
        loose = self.loose_parameters(name)
        super().load_component_state_dict(name, {k: v for k, v in state.items() if k not in loose})
        with torch.no_grad():
            for path, parameter in loose.items():
                parameter.copy_(state[path])

    def collator(self, train: bool) -> ChatCollator:
        # An answer ends where the checkpoint's generate stops: at any of its eos ids.
        eos = self.hf.generation_config.eos_token_id
        return ChatCollator(self.processor, train, end_ids=eos if isinstance(eos, list) else [eos])

    def encoder_probes(self) -> dict:
        # A further tower (a video tower: the only kind a family has yet) by a blank clip.
        return {**super().encoder_probes(), **{name: self.video_probe for name in self.towers()}}

    def video_probe(self) -> object:
        """The checkpoint's own video path on a blank two-frame clip: the features the LLM reads."""
        clip = np.zeros((2, 224, 224, 3), np.uint8)
        blank = self.processor.video_processor(videos=[clip], do_sample_frames=False, return_tensors="pt")
        return self.hf.model.get_video_features(**blank.to(self.hf.device)).pooler_output

    def encoder_probe(self) -> object:
        if "image" not in self.modalities:  # a sound's encoder: its features of one silent second
            rate = self.processor.feature_extractor.sampling_rate
            silence = self.processor.feature_extractor(
                [np.zeros(rate, np.float32)], sampling_rate=rate, return_tensors="pt"
            )
            return self.encoder(silence["input_features"].to(self.hf.device)).last_hidden_state
        # The checkpoint's own image path (its feature layer, CLS or not, its merger): the
        # family's ``image_features`` of it (``pooler_output``, ...) are what the LLM reads.
        blank = self.processor.image_processor(images=[Image.new("RGB", (224, 224))], return_tensors="pt")
        output = self.hf.model.get_image_features(**blank.to(self.hf.device))
        return [output[name] for name in self.family.image_features]

    def set_input_projector(self, projector: nn.Module) -> None:
        self.hf.set_submodule(self.family.input_projector, projector)

    @torch.no_grad()
    def projector_inputs(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The vision features the input projector reads, as the checkpoint's own image path
        selects them (layer, CLS or not): caught on their way into the projector."""
        caught = []
        hook = self.input_projector.register_forward_pre_hook(lambda module, args: caught.append(args[0]))
        try:
            self.hf.model.get_image_features(pixel_values=pixel_values)
        finally:
            hook.remove()
        return caught[0]

    def forward(self, **batch):
        outputs = self.hf(**batch)
        if outputs.loss is not None and (unreached := self.media_weights_term()) is not None:
            outputs.loss = outputs.loss + unreached
        return outputs

    @torch.no_grad()
    def generate(self, batch: dict, max_new_tokens: int) -> torch.Tensor:
        """The checkpoint's own greedy ``generate`` on a left-padded batch; the new tokens."""
        tokens = self.hf.generate(**model_inputs(batch), max_new_tokens=max_new_tokens, do_sample=False)
        return tokens[:, batch["input_ids"].shape[1] :]
