"""Vision-language models (LLaVA, Qwen-VL, SmolVLM families; the registry in families.py): tiny and real-format
offline checkpoints, loading (4-bit, LoRA, reference mode), position ids and model inputs."""

from mmpo.models.answer_tokens import AnswerTokenError, check_answer_tokens
from mmpo.models.families import FAMILY_SPECS, Family, family_of_model_type
from mmpo.models.generate import generate_answers
from mmpo.models.inputs import (
    IGNORE_INDEX,
    encode_answers,
    encode_prompts,
    encode_templated,
    join_prompt_answer,
    media_keys,
    position_ids_from_mask,
    prompt_text,
)
from mmpo.models.loading import (
    AdaptersOff,
    add_lora,
    base_model,
    family_of,
    has_adapter,
    load_model,
    reference_mode,
    resolve_device,
    set_full_finetune,
    supports_video,
)
from mmpo.models.real_format import REAL_FORMAT_FAMILIES, make_real_format_model
from mmpo.models.tiny import (
    FAMILIES,
    VIDEO_FAMILIES,
    build_model,
    build_tokenizer,
    count_parameters,
    make_model_main,
    make_tiny_model,
)

__all__ = [
    "FAMILIES", "VIDEO_FAMILIES", "IGNORE_INDEX", "FAMILY_SPECS", "Family", "family_of_model_type",
    "make_tiny_model", "build_model", "build_tokenizer", "count_parameters", "make_model_main",
    "make_real_format_model", "REAL_FORMAT_FAMILIES",
    "load_model", "add_lora", "reference_mode", "AdaptersOff", "family_of", "supports_video", "has_adapter", "base_model",
    "resolve_device", "set_full_finetune",
    "generate_answers", "prompt_text", "encode_prompts", "encode_templated", "encode_answers", "join_prompt_answer",
    "media_keys", "position_ids_from_mask", "check_answer_tokens", "AnswerTokenError",
]
