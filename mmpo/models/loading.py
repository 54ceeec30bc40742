"""Load any LLaVA-family checkpoint from a local folder: dtype, device, 4-bit NF4, LoRA, reference mode.

The reference policy is the same model with its adapters disabled (`reference_mode`), never a second
copy of the weights (torchtune `disable_adapter`, TRL `use_adapter`; docs/STYLE.md principle 12).
Library facts used here are measured in docs/ENVIRONMENT.md §2c (bitsandbytes on CPU) and §2e (peft).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from pathlib import Path

import torch

from mmpo.models.families import DEFAULT_LORA_TARGET, FAMILY_SPECS, Family, family_of_model_type
from mmpo.models.settings import LoraConfig, ModelConfig
from mmpo.records import make_id
from mmpo.schema import to_dict

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Modules that stay in full precision under 4-bit and are frozen in full fine-tuning come from the family
# registry (`Family.vision_modules`, `Family.projector`). transformers 5 needs FULL prefixes in
# llm_int8_skip_modules: a bare "vision_tower" left the CLIP linears quantised (docs/ENVIRONMENT.md §2c gotcha 2).


def resolve_device(device: str) -> torch.device:
    """`auto` -> cuda if available else cpu; anything else as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def other_base(adapter: str | Path, path: str) -> str:
    """The base model `adapter` records (PEFT's `base_model_name_or_path`) when it is not `path`, else "" (also when
    it records none). Local folders compare as resolved paths, so `./ckpt` and `ckpt` are one base."""
    config = Path(adapter) / "adapter_config.json"
    base = json.loads(config.read_text()).get("base_model_name_or_path") if config.is_file() else None
    if not base or base == path:
        return ""
    same = os.path.isdir(base) and os.path.isdir(path) and os.path.realpath(base) == os.path.realpath(path)
    return "" if same else base


def check_folder(path: str, what: str) -> Path:
    """Local folders only (never a hub id): a missing folder is an error that names it and says where one comes from."""
    folder = Path(path)
    if not path or not folder.is_dir():
        where = ("an adapter is what `mmpo train` saves in its run folder (RUN/adapter)" if what == "adapter" else
                 "models load from local folders only; write a tiny one with `mmpo make-model --family llava --out DIR`")
        raise FileNotFoundError(f"{what} folder not found: {path!r} ({where})")
    if what == "model" and (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
        base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path") or "BASE"
        raise ValueError(f"{path} is a LoRA adapter, not a model: use model.path={base} model.adapter={path}")
    return folder


def _spec_of_config(config) -> Family:
    return family_of_model_type(getattr(config, "model_type", None))


def family_spec(model) -> Family:
    """The model's registry entry (`mmpo.models.families.Family`)."""
    return _spec_of_config(base_model(model).config)


def _quantization_config(family: Family, device: torch.device):
    """NF4 + double quantisation; vision tower, projector and lm_head stay unquantised (QLoRA recipe)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        # bf16 compute on GPU; the CPU 4-bit kernels were measured in fp32 (docs/ENVIRONMENT.md §2c)
        bnb_4bit_compute_dtype=torch.bfloat16 if device.type == "cuda" else torch.float32,
        llm_int8_skip_modules=[*family.vision_modules, family.projector, "lm_head"])


def load_model(cfg: ModelConfig, lora: LoraConfig | None = None, trainable: bool = False):
    """Load model and processor from `cfg.path`, optionally 4-bit, with an adapter or a fresh LoRA.

    Args:
        cfg: model config (path, adapter, dtype, device, load_in_4bit, trust_remote_code, attn_implementation).
        lora: LoRA settings used when `trainable` (a fresh adapter if enabled; full fine-tuning of the
            language model if disabled or None).
        trainable: prepare the model for training (4-bit prep, trainable params, train mode); otherwise
            all parameters are frozen and the model is in eval mode.

    Returns:
        (model, processor). The model is a `peft.PeftModel` when an adapter is loaded or added.
    """
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    folder = check_folder(cfg.path, "model")
    if cfg.dtype not in DTYPES:
        raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}, got {cfg.dtype!r}")
    device = resolve_device(cfg.device)
    common = dict(local_files_only=True, trust_remote_code=cfg.trust_remote_code)
    family = _spec_of_config(AutoConfig.from_pretrained(folder, **common))
    kwargs = dict(dtype=DTYPES[cfg.dtype], attn_implementation=cfg.attn_implementation, **common)
    if cfg.load_in_4bit:
        kwargs.update(quantization_config=_quantization_config(family, device), device_map={"": str(device)})
    model = AutoModelForImageTextToText.from_pretrained(folder, **kwargs)
    if not cfg.load_in_4bit:
        model = model.to(device)
    processor = set_image_size(AutoProcessor.from_pretrained(folder, **common), family, cfg)
    model = _attach_trainable(model, cfg, lora, trainable)
    return model, processor


def load_skeleton(cfg: ModelConfig, lora: LoraConfig | None = None, trainable: bool = False):
    """What `load_model` returns, on the meta device: the structure (adapter included) without the weights.

    Sharded training (FSDP2) builds this on every rank but the main one, which alone reads the weights and
    sends each rank its shards, so an N-process run holds one copy of the model, not N
    (`mmpo.distributed.shard_from_main`).

    Returns:
        (model on the meta device, processor).
    """
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    folder = check_folder(cfg.path, "model")
    if cfg.load_in_4bit:
        raise ValueError("a 4-bit model cannot be built without its weights")
    common = dict(local_files_only=True, trust_remote_code=cfg.trust_remote_code)
    config = AutoConfig.from_pretrained(folder, **common)
    family = _spec_of_config(config)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config, dtype=DTYPES[cfg.dtype],
                                                        attn_implementation=cfg.attn_implementation,
                                                        trust_remote_code=cfg.trust_remote_code)
    processor = set_image_size(AutoProcessor.from_pretrained(folder, **common), family, cfg)
    return _attach_trainable(model, cfg, lora, trainable), processor


def set_image_size(processor, family: Family, cfg: ModelConfig):
    """Apply `model.min_pixels` / `max_pixels` / `image_longest_edge` to the processor's IMAGE processor.

    Set on the loaded processor, so every encoding (collator, length pre-flight, evaluation) counts the same
    image tokens. Video frames keep the checkpoint's own limits: Qwen's video processors have their own budget
    (Qwen3-VL's covers all frames), and `AutoProcessor.from_pretrained(min_pixels=...)` would change Qwen2.5-VL's
    video processor too but not Qwen3-VL's, hence the explicit assignment. A setting the family does not use
    is an error, not silently ignored.
    """
    pixels = {"min_pixels": cfg.min_pixels, "max_pixels": cfg.max_pixels}
    wanted = {k: v for k, v in {**pixels, "image_longest_edge": cfg.image_longest_edge}.items() if v}
    if not wanted:
        return processor
    usable = {"pixels": set(pixels), "longest_edge": {"image_longest_edge"}}.get(family.resize, set())
    if set(wanted) - usable:
        users = {"pixels": "min_pixels/max_pixels", "longest_edge": "image_longest_edge"}
        by = ", ".join(f"{f.name}: {users[f.resize]}" for f in FAMILY_SPECS.values() if f.resize)
        raise ValueError(f"model.{'/'.join(sorted(set(wanted) - usable))}: {family.name} checkpoints do not take "
                         f"this setting (image resolution settings by family: {by})")
    images = processor.image_processor
    size = {k: v for k, v in dict(images.size).items() if v is not None}
    if family.resize == "pixels":
        size["shortest_edge"] = cfg.min_pixels or size["shortest_edge"]
        size["longest_edge"] = cfg.max_pixels or size["longest_edge"]
        if size["shortest_edge"] > size["longest_edge"]:
            raise ValueError(f"model.min_pixels/max_pixels: {size['shortest_edge']} > {size['longest_edge']} "
                             "(one of them is the checkpoint's own value)")
    else:
        size["longest_edge"] = cfg.image_longest_edge
    images.size = type(images.size)(**size) if not isinstance(images.size, dict) else size
    return processor


def _attach_trainable(model, cfg: ModelConfig, lora: LoraConfig | None, trainable: bool):
    """Adapter / LoRA / full fine-tuning set-up, or frozen eval mode."""
    if cfg.load_in_4bit and trainable:
        from peft import prepare_model_for_kbit_training

        # casts norms to fp32 and enables input grads; checkpointing is the trainer's choice
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if cfg.adapter:
        from peft import PeftModel

        adapter = check_folder(cfg.adapter, "adapter")
        trained_on = other_base(adapter, cfg.path)
        if trained_on:
            log.warning("%s was trained on %r, not on model.path %r: loading it on this model anyway", adapter,
                        trained_on, cfg.path)
        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=trainable)
    elif trainable and lora is not None and lora.enabled:
        model = add_lora(model, lora)
    elif trainable:
        if cfg.load_in_4bit:
            raise ValueError("full fine-tuning of a 4-bit model is not possible; enable LoRA (lora.enabled=true)")
        set_full_finetune(model, train_projector=bool(lora and lora.train_projector))
    if not trainable:
        model.requires_grad_(False)
        return model.eval()
    return model.train()


def set_full_finetune(model, train_projector: bool = False):
    """Full fine-tuning: the language model (+ lm_head) trains, the vision tower stays frozen.

    Args:
        model: a plain (non-PEFT) LLaVA-family model.
        train_projector: also train the multimodal projector.

    Returns:
        The same model.
    """
    family = family_spec(model)
    frozen = tuple(family.vision_modules) + (() if train_projector else (family.projector,))
    for name, param in model.named_parameters():
        param.requires_grad_(not name.startswith(frozen))
    return model


def add_lora(model, lora: LoraConfig):
    """Wrap the model with a fresh LoRA adapter on the language model's linear layers.

    Args:
        model: a supported model (plain or 4-bit prepared).
        lora: rank, alpha, dropout, target regex (language model only; the vision tower also has
            q/k/v_proj, docs/ENVIRONMENT.md §2e), and whether the projector trains too. The config's default
            regex is replaced by the family's own default (`Family.lora_target`: SmolVLM's language model
            is `model.text_model`, which the LLaVA default would not match).

    Returns:
        A `peft.PeftModel`. With `train_projector`, the projector is a full-weight `modules_to_save`
        copy, so the adapter-disabled reference keeps the original projector.
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    family = family_spec(model)
    target = family.lora_target if lora.target_modules == DEFAULT_LORA_TARGET else lora.target_modules
    if not any(re.fullmatch(target, name) for name, _ in model.named_modules()):
        raise ValueError(f"lora.target_modules {target!r} matches no module of this {family.name} model")
    peft_cfg = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=target,
                              modules_to_save=[family.projector_leaf] if lora.train_projector else None)
    return get_peft_model(model, peft_cfg)


def has_adapter(model) -> bool:
    """True for a peft model (an adapter that can be disabled)."""
    from peft import PeftModel

    return isinstance(model, PeftModel)


@contextlib.contextmanager
def reference_mode(model):
    """Context manager: the policy with its adapters disabled is the reference policy.

    Args:
        model: a `peft.PeftModel` (from `add_lora` or a loaded adapter).

    Yields:
        The same model, adapters disabled until the block exits.
    """
    if not has_adapter(model):
        raise ValueError(f"reference_mode needs a model with a LoRA/PEFT adapter, got {type(model).__name__}; "
                         "with full fine-tuning keep a separate frozen reference model instead")
    with model.disable_adapter():
        yield model


class AdaptersOff:
    """Context manager factory: the policy's adapter layers disabled (the reference), found once.

    `PeftModel.disable_adapter()` walks every module and builds a model status report on each call:
    15 ms of a 120 ms step on the tiny CPU benchmark (benchmarks/LOG.md, 2026-11-23). The set of adapter
    layers is fixed during training, so they are collected once and toggled with the same per-layer
    call peft itself uses (`peft.tuners.tuners_utils.BaseTunerLayer.enable_adapters`, also on
    `modules_to_save` wrappers). Falls back to `reference_mode` for non-LoRA-style (prompt) adapters.
    """

    def __init__(self, model):
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils.other import AuxiliaryTrainingWrapper

        self.model = model
        self.layers = [m for m in model.modules() if isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper))]
        prompt_learning = any(c.is_prompt_learning or c.is_adaption_prompt for c in model.peft_config.values())
        self.fallback = prompt_learning or not self.layers

    @contextlib.contextmanager
    def __call__(self):
        if self.fallback:
            with reference_mode(self.model):
                yield
            return
        try:
            for m in self.layers:
                m.enable_adapters(False)
            yield
        finally:
            for m in self.layers:
                m.enable_adapters(True)


def base_model(model):
    """The underlying transformers model (unwraps peft)."""
    return model.get_base_model() if has_adapter(model) else model


def family_of(model) -> str:
    """The model's family name, a key of `mmpo.models.families.FAMILY_SPECS` (from `config.model_type`)."""
    return family_spec(model).name


def supports_video(model) -> bool:
    """True if the model's family takes video input (`pixel_values_videos`)."""
    return family_spec(model).video


def fingerprint(*parts) -> str:
    """A short stable hash of JSON-able parts (cache keys, run identities): the records' `make_id` rule."""
    return make_id(*parts)


def weights_fingerprint(model_cfg) -> str:
    """Changes when the weights or their numerics would: weight and adapter files (size, mtime), dtype, 4-bit."""
    files = sorted(Path(model_cfg.path).glob("*.safetensors")) if model_cfg.path else []
    stats = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    # The adapter's README.md is left out: `mmpo eval` appends its results to that model card, which must not make
    # the next evaluation of the same weights look like other settings.
    adapter = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in Path(model_cfg.adapter).glob("*")
                     if f.is_file() and f.name != "README.md") if model_cfg.adapter else []
    return fingerprint(stats, adapter, model_cfg.dtype, model_cfg.load_in_4bit)


def model_fingerprint(model_cfg) -> str:
    """`weights_fingerprint` plus every other model setting (paths, frames, attention): a cache key."""
    return fingerprint(to_dict(model_cfg), weights_fingerprint(model_cfg))
