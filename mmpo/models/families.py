"""The model-family registry: everything mmpo must know about one family, in one entry.

`FAMILY_SPECS` is a plain dict, family name -> `Family` (a small frozen dataclass). Loading (4-bit skip
list, freezing, LoRA targets, `train_projector`), the position ids of every forward (1-D from the mask, or
M-RoPE from the model's own `get_rope_index`), multi-image support and the checkpoint factories read it;
no other module keeps a list of model types. Adding a family = one entry here + a checkpoint builder
(`mmpo.models.tiny` for word-level test models, `mmpo.models.real_format` for shrunk hub layouts) + tests
(docs/ARCHITECTURE.md, "How to add a model family").

Media tensors are never sliced by batch row anywhere in mmpo: every forward that needs other media (the
rejected side, mDPO's corrupted media, PaMi's bag, evaluation's per-media rows) re-encodes the rows it needs
with the processor. So Qwen's flattened `pixel_values` (all images' patches in one [N_patches, D] tensor, with
`image_grid_thw` [N_images, 3] saying how many each image has) need no special handling; `media_rows` below
documents the layout for code that ever does slice.
"""

from __future__ import annotations

from dataclasses import dataclass

# the language model's linear layers; the vision towers have q/k/v_proj too (docs/ENVIRONMENT.md §2e)
LINEARS = r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
DEFAULT_LORA_TARGET = rf".*language_model.*\.{LINEARS}"  # = config.LoraConfig.target_modules' default


@dataclass(frozen=True)
class Family:
    """What mmpo needs to know about one model family.

    name: the registry key (`mmpo make-model --family NAME`).
    model_types: `config.model_type` values that load as this family.
    model_class: the transformers class (name) of the full model (`AutoModelForImageTextToText` picks it too).
    vision_modules: full module prefixes of the vision tower(s): kept unquantised under 4-bit, frozen always.
    projector: full prefix of the vision-to-text projector (unquantised, frozen unless `train_projector`).
    lora_target: the default LoRA target regex (language model linears only).
    positions: "mask" (1-D, cumsum of the attention mask) or "mrope" (3-D [3, B, L] from the model's
        `get_rope_index`, text continuing from the prompt's last position).
    video: takes `pixel_values_videos`.
    multi_image: a prompt may hold several images (placeholders where the prompt puts them).
    processor_class: the transformers processor class (name) its checkpoints load with.
    resize: how `model.min_pixels/max_pixels/image_longest_edge` set its image resolution: "pixels" (a pixel
        budget, image processor `size = {shortest_edge: min, longest_edge: max}`: Qwen-VL), "longest_edge"
        (`size.longest_edge`, before tiling: Idefics3) or "" (fixed by the checkpoint).
    """

    name: str
    model_types: tuple[str, ...]
    model_class: str
    processor_class: str
    vision_modules: tuple[str, ...]
    projector: str
    lora_target: str = DEFAULT_LORA_TARGET
    positions: str = "mask"
    video: bool = False
    multi_image: bool = False
    resize: str = ""

    @property
    def projector_leaf(self) -> str:
        """The projector's own module name (what peft's `modules_to_save` matches)."""
        return self.projector.rsplit(".", 1)[-1]

    def transformers_class(self):
        import transformers

        return getattr(transformers, self.model_class)


_LLAVA_PROJ = "model.multi_modal_projector"

FAMILY_SPECS: dict[str, Family] = {
    "llava": Family("llava", ("llava",), "LlavaForConditionalGeneration", "LlavaProcessor", ("model.vision_tower",),
                    _LLAVA_PROJ),
    "llava_next": Family("llava_next", ("llava_next",), "LlavaNextForConditionalGeneration", "LlavaNextProcessor",
                         ("model.vision_tower",), _LLAVA_PROJ),
    "llava_next_video": Family("llava_next_video", ("llava_next_video",), "LlavaNextVideoForConditionalGeneration",
                               "LlavaNextVideoProcessor",
                               ("model.vision_tower", "model.vision_resampler"), _LLAVA_PROJ, video=True),
    "video_llava": Family("video_llava", ("video_llava",), "VideoLlavaForConditionalGeneration", "VideoLlavaProcessor",
                          ("model.image_tower", "model.video_tower"), _LLAVA_PROJ, video=True),
    "llava_onevision": Family("llava_onevision", ("llava_onevision",), "LlavaOnevisionForConditionalGeneration",
                              "LlavaOnevisionProcessor",
                              ("model.vision_tower",), _LLAVA_PROJ, video=True, multi_image=True),
    # Qwen-VL: the projector (`merger`) sits inside the vision tower; positions are M-RoPE.
    "qwen2_vl": Family("qwen2_vl", ("qwen2_vl",), "Qwen2VLForConditionalGeneration", "Qwen2VLProcessor", ("model.visual",),
                       "model.visual.merger", positions="mrope", video=True, multi_image=True, resize="pixels"),
    "qwen2_5_vl": Family("qwen2_5_vl", ("qwen2_5_vl",), "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor",
                         ("model.visual",),
                         "model.visual.merger", positions="mrope", video=True, multi_image=True, resize="pixels"),
    "qwen3_vl": Family("qwen3_vl", ("qwen3_vl",), "Qwen3VLForConditionalGeneration", "Qwen3VLProcessor", ("model.visual",),
                       "model.visual.merger", positions="mrope", video=True, multi_image=True, resize="pixels"),
    # Qwen3-VL-MoE (e.g. Qwen3-VL-30B-A3B): Qwen3-VL with sparse MoE MLPs. Its experts are fused 3-D parameters,
    # not Linear modules (nor is the router `mlp.gate`): the default LoRA reaches the attention only, and 4-bit
    # quantises the attention only, the experts and router stay in the load dtype (tests/test_families_more.py).
    "qwen3_vl_moe": Family("qwen3_vl_moe", ("qwen3_vl_moe",), "Qwen3VLMoeForConditionalGeneration", "Qwen3VLProcessor",
                           ("model.visual",), "model.visual.merger", positions="mrope", video=True, multi_image=True,
                           resize="pixels"),
    # SmolVLM is Idefics3: SigLIP `vision_model`, pixel-shuffle `connector`, Llama `text_model`.
    "idefics3": Family("idefics3", ("idefics3", "smolvlm"), "Idefics3ForConditionalGeneration", "Idefics3Processor",
                       ("model.vision_model",), "model.connector", lora_target=rf".*text_model.*\.{LINEARS}",
                       multi_image=True, resize="longest_edge"),
}
FAMILY_ALIASES = {"smolvlm": "idefics3", "qwen2.5_vl": "qwen2_5_vl"}  # names users type for a registry key


def spec(name: str) -> Family:
    """The registry entry of `name` (an alias such as "smolvlm" allowed); a clear error for anything else."""
    key = FAMILY_ALIASES.get(name, name)
    if key not in FAMILY_SPECS:
        raise ValueError(f"unknown model family {name!r}; supported: {', '.join(FAMILY_SPECS)} "
                         f"(aliases: {', '.join(FAMILY_ALIASES)})")
    return FAMILY_SPECS[key]


def family_of_model_type(model_type: str | None) -> Family:
    """The family whose `model_types` hold a config's `model_type`; an error listing the supported ones."""
    for fam in FAMILY_SPECS.values():
        if model_type in fam.model_types:
            return fam
    supported = sorted(t for f in FAMILY_SPECS.values() for t in f.model_types)
    raise ValueError(f"unsupported model type {model_type!r}; supported model types: {supported}")


def family_of_processor(processor) -> Family | None:
    """The family whose checkpoints load `processor`'s class (None for a bare tokenizer or an unknown class)."""
    name = type(processor).__name__
    aliases = {"SmolVLMProcessor": "Idefics3Processor"}
    name = aliases.get(name, name)
    return next((f for f in FAMILY_SPECS.values() if f.processor_class == name), None)


def multi_image_families() -> tuple[str, ...]:
    """Families that take several images in one prompt."""
    return tuple(f.name for f in FAMILY_SPECS.values() if f.multi_image)


def media_rows(batch: dict, key: str, image_counts: list[int]) -> list:
    """Split a batch's media tensor into per-row pieces, for code that needs one row's media.

    LLaVA-style tensors are per image ([N_images, ...] or per row); Qwen's `pixel_values` are all images'
    patches flattened ([sum_i t*h*w, D]) and must be cut by `image_grid_thw`, never by batch index.

    Args:
        batch: an `encode_prompts` output.
        key: "pixel_values" (or "pixel_values_videos" with `video_grid_thw`).
        image_counts: media items per row, in order.

    Returns:
        One tensor per row.
    """
    import torch

    grid_key = {"pixel_values": "image_grid_thw", "pixel_values_videos": "video_grid_thw"}[key]
    values = batch[key]
    if grid_key in batch:
        per_item = batch[grid_key].prod(-1).tolist()  # patches per image
        items = list(torch.split(values, per_item))
    else:
        items = list(values)
    rows, start = [], 0
    for n in image_counts:
        rows.append(torch.cat(items[start:start + n]) if grid_key in batch else torch.stack(items[start:start + n]))
        start += n
    return rows
