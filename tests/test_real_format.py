"""Real-format checkpoints (`mmpo.models.real_format`) keep the published checkpoints' facts, and answer tokens
are guarded against tokenizer settings that shift them (`mmpo.models.answer_tokens`).

The family-parametrised layout tests (labels, packed == plain, yes/no ids, batched generation, 4-bit + LoRA)
run on these checkpoints in test_models.py and test_logprobs.py.
"""

import gzip
import hashlib
import json
import re

import numpy as np
import pytest
import torch
from helpers import real_format_model, toy_pairs
from PIL import Image
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, LlamaTokenizer

from mmpo.batches import PairCollator
from mmpo.models import answer_tokens as guard
from mmpo.models import encode_answers, encode_prompts, prompt_text
from mmpo.models.answer_tokens import AnswerTokenError, check_answer_tokens
from mmpo.models.real_format import FIXTURES, REAL_FORMAT_FAMILIES, legacy_key, make_real_format_model
from mmpo.models.scoring import yes_no_ids
from mmpo.records import read_pairs

# the hub's tokenizer.json for llava-1.5-7b-hf (mmpo/models/hub_files/llava/SOURCE.md)
LLAVA_TOKENIZER_SHA256 = "1a53b8e0a82f29402951898f46cda70e0dd2850086374991eff038b163090fdc"
# token ids transformers' processor tests assert for the hub processors' prompt
# "<video> What is shown in this video?" with the generation prompt
HUB_VIDEO_PROMPT_IDS = {
    "llava_next_video": [1, 3148, 1001, 29901, 29871, 32000, 13, 5618, 338, 4318, 297, 445, 4863, 29973, 319, 1799,
                         9047, 13566, 29901],
    "llava_onevision": [151644, 872, 220, 151647, 198, 3838, 374, 6839, 304, 419, 2766, 30, 151645, 151644, 77091,
                        198],
}
LEGACY_PREFIXES = ("language_model.model.", "language_model.lm_head.", "vision_tower.vision_model.",
                   "multi_modal_projector.", "image_newline")


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    return {f: real_format_model(f, root) for f in REAL_FORMAT_FAMILIES}


@pytest.fixture(scope="module")
def procs(paths):
    return {f: AutoProcessor.from_pretrained(p) for f, p in paths.items()}


def test_vendored_files_are_small_and_verbatim():
    total = sum(f.stat().st_size for f in FIXTURES.rglob("*") if f.is_file())
    assert total < 3_600_000, total  # gzip keeps the three tokenizers at ~3.1 MB together (Qwen-VL reuses Qwen2's)
    raw = gzip.decompress((FIXTURES / "llava" / "tokenizer.json.gz").read_bytes())
    assert hashlib.sha256(raw).hexdigest() == LLAVA_TOKENIZER_SHA256


def test_llava_15_facts(paths, procs):
    proc, config = procs["llava"], AutoConfig.from_pretrained(paths["llava"])
    tok = proc.tokenizer
    assert tok.convert_tokens_to_ids("<image>") == 32000 == config.image_token_id
    assert tok.pad_token_id == 32001 and len(tok) == 32002 and config.text_config.vocab_size == 32064
    assert prompt_text(proc, "What is shown?", "image") == "USER: <image>\nWhat is shown? ASSISTANT:"
    assert yes_no_ids(proc) == ([3869, 4874], [1939, 694])
    assert tok.convert_ids_to_tokens([3869, 1939]) == ["▁Yes", "▁No"]
    assert encode_answers(proc, ["Yes", "No"])["input_ids"].tolist() == [[3869, 2], [1939, 2]]
    # shrunk: 56-px images, real patch 14 -> 16 image tokens (the real 336 px give 576, test below)
    batch = encode_prompts(proc, ["What is shown?"], [Image.new("RGB", (80, 60))], "image")
    assert int((batch["input_ids"] == 32000).sum()) == 16 and batch["pixel_values"].shape[-1] == 56
    assert config.vision_config.patch_size == 14 and config.vision_feature_layer == -2


@pytest.mark.parametrize("family", ["llava_next_video", "llava_onevision"])
def test_hub_prompt_token_ids(procs, family):
    proc = procs[family]
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What is shown in this video?"}]}]
    text = proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert proc.tokenizer(text)["input_ids"] == HUB_VIDEO_PROMPT_IDS[family]


def test_media_and_special_token_ids(paths, procs):
    nv, ov = procs["llava_next_video"].tokenizer, procs["llava_onevision"].tokenizer
    assert nv.convert_tokens_to_ids(["<video>", "<image>"]) == [32000, 32001] and nv.pad_token_id == 0
    assert ov.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]) == list(
        range(151643, 151648))
    assert (ov.eos_token, ov.pad_token, len(ov)) == ("<|im_end|>", "<|endoftext|>", 151648)
    assert AutoConfig.from_pretrained(paths["llava_onevision"]).text_config.vocab_size == 152000
    assert AutoConfig.from_pretrained(paths["llava_next_video"]).text_config.vocab_size == 32064


def test_qwen2_tokenizer_reproduces_llama_cpp_vectors(procs):
    tok = procs["llava_onevision"].tokenizer
    stem = FIXTURES / "llava_onevision" / "ggml-vocab-qwen2.gguf"
    texts = stem.with_suffix(".gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    ids = stem.with_suffix(".gguf.out").read_text(encoding="utf-8").split("\n")
    assert len(texts) == 47
    for text, want in zip(texts, ids):
        assert tok(text, add_special_tokens=False)["input_ids"] == [int(x) for x in want.split()], text


def _layer(key: str) -> int | None:
    found = re.search(r"\.layers\.(\d+)\.", key)
    return int(found.group(1)) if found else None


def test_llava_weight_keys_match_the_hub_index_up_to_depth(paths):
    ours = json.loads((paths["llava"] / "model.safetensors.index.json").read_text())["weight_map"]
    hub = json.loads((FIXTURES / "llava" / "hub.model.safetensors.index.json").read_text())["weight_map"]
    # the same names as the hub's 7B, minus the layers beyond the shrunk depth (2 text, 2 vision layers)
    assert set(ours) == {k for k in hub if _layer(k) is None or _layer(k) < 2}
    assert sorted(set(ours.values())) == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]


@pytest.mark.parametrize("family", REAL_FORMAT_FAMILIES)
def test_legacy_layout_loads_every_weight(paths, family):
    from safetensors import safe_open

    index = json.loads((paths[family] / "model.safetensors.index.json").read_text())["weight_map"]
    assert all(k.startswith(LEGACY_PREFIXES) for k in index) and len(set(index.values())) == 3
    model, info = AutoModelForImageTextToText.from_pretrained(paths[family], output_loading_info=True)
    assert not any(info.values()), info  # nothing missing, unexpected or mismatched
    params = dict(model.named_parameters())
    assert {legacy_key(n) for n in params} == set(index)
    for name in ("lm_head.weight", "model.language_model.layers.1.mlp.down_proj.weight",
                 "model.vision_tower.encoder.layers.1.mlp.fc1.weight"):
        with safe_open(paths[family] / index[legacy_key(name)], "pt") as f:  # loaded, not re-initialised
            torch.testing.assert_close(params[name].data, f.get_tensor(legacy_key(name)).to(params[name].dtype))


def test_real_size_processors_token_counts(tmp_path):
    """Unshrunk settings reproduce the counts measured on the real processors (shared real-format notes)."""
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8))
    video = np.zeros((8, 480, 640, 3), dtype=np.uint8)
    want = {"llava": 576, "llava_next_video": 2340, "llava_onevision": 2929}
    for family, n in want.items():
        path = make_real_format_model(family, tmp_path / family, shrink=False)
        assert not list(path.glob("*.safetensors"))  # config only
        proc = AutoProcessor.from_pretrained(path)
        image_id = proc.tokenizer.convert_tokens_to_ids("<image>")
        assert int((encode_prompts(proc, ["Is it?"], [image], "image")["input_ids"] == image_id).sum()) == n
    video_id = proc.tokenizer.convert_tokens_to_ids("<video>")
    assert int((encode_prompts(proc, ["Is it?"], [video], "video")["input_ids"] == video_id).sum()) == 1569


# ---------------------------------------------------------------- the answer-token guard


def _without_prefix_space(path):
    """The real LLaVA-1.5 processor with its tokenizer reloaded with add_prefix_space=False (the broken setting)."""
    proc = AutoProcessor.from_pretrained(path)
    proc.tokenizer = LlamaTokenizer.from_pretrained(path, add_prefix_space=False)
    assert proc.tokenizer("Yes", add_special_tokens=False)["input_ids"] == [8241]  # "Yes", not "▁Yes"
    return proc


@pytest.mark.parametrize("family", REAL_FORMAT_FAMILIES)
def test_guard_passes_the_real_tokenizers(procs, family):
    check_answer_tokens(procs[family])
    assert encode_answers(procs[family], ["Yes"])["input_ids"][0, 0] == yes_no_ids(procs[family])[0][0]


def test_guard_rejects_a_tokenizer_without_prefix_space(paths):
    proc = _without_prefix_space(paths["llava"])
    with pytest.raises(AnswerTokenError, match="add_prefix_space=False") as err:
        encode_answers(proc, ["Yes"])
    assert "['Yes'] [8241]" in str(err.value) and "['▁Yes'] [3869]" in str(err.value)
    with pytest.raises(AnswerTokenError, match="add_prefix_space"):
        yes_no_ids(proc)
    proc.tokenizer = LlamaTokenizer.from_pretrained(paths["llava"])  # the same class with the saved settings
    assert encode_answers(proc, ["Yes"])["input_ids"].tolist() == [[3869, 2]]


def test_guard_stops_training_collation(paths, tmp_path):
    pairs = toy_pairs(tmp_path, n=2)
    collate = PairCollator(_without_prefix_space(paths["llava"]), str(tmp_path))
    with pytest.raises(AnswerTokenError):
        collate(read_pairs(pairs, tmp_path))


def test_guard_checks_each_tokenizer_once(paths, monkeypatch):
    calls = []
    real = guard.answer_ids_in_context
    monkeypatch.setattr(guard, "answer_ids_in_context", lambda *a: calls.append(a) or real(*a))
    proc = AutoProcessor.from_pretrained(paths["llava"])  # a fresh tokenizer object
    encode_answers(proc, ["Yes"])
    encode_answers(proc, ["No"])
    yes_no_ids(proc)
    assert len(calls) == len(guard.PROBES)
