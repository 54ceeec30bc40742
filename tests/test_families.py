"""Qwen2-VL, Qwen2.5-VL, Qwen3-VL and SmolVLM (Idefics3) on shrunk real-format checkpoints (the real tokenizer,
chat template, processor and token ids; `mmpo.models.real_format`), checked against plain Hugging Face forwards
in which the model computes its own (M-RoPE) position ids."""

import hashlib
import json
import math

import numpy as np
import pytest
import torch
from helpers import color_image, real_format_model, toy_pairs
from PIL import Image

from mmpo.batches import PairCollator
from mmpo.config import LoraConfig, ModelConfig, TrainConfig, load
from mmpo.logprobs import packed_logps, plain_logps
from mmpo.metrics import read_metrics
from mmpo.models import encode_answers, encode_prompts, generate_answers, load_model, prompt_text
from mmpo.models.answer_tokens import answer_prefix
from mmpo.models.families import FAMILY_SPECS, family_of_model_type, media_rows, spec
from mmpo.models.real_format import FIXTURES, VLM_FAMILIES
from mmpo.models.scoring import margins_plain, yes_no_ids
from mmpo.records import read_pairs
from mmpo.trainer import train

PROMPTS = ["What is in the image?", "Is there a red square on the left of the picture?"]
CHOSEN, REJECTED = ["A cat.", "Yes, there is one."], ["A dog on a mat.", "No."]
END = {"qwen2_vl": "<|im_end|>", "qwen2_5_vl": "<|im_end|>", "qwen3_vl": "<|im_end|>", "idefics3": "<end_of_utterance>"}


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {f: real_format_model(f, root) for f in VLM_FAMILIES}


@pytest.fixture(scope="module")
def loaded(paths):
    return {f: load_model(ModelConfig(path=str(p), device="cpu")) for f, p in paths.items()}


def _images(n=2, seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(56, 84), (112, 56), (84, 84)]
    return [Image.fromarray(rng.integers(0, 255, (*shapes[i % 3], 3), dtype=np.uint8)) for i in range(n)]


def _conversation(proc, prompt, answer, image):
    """The processor's own tokens and tensors for the whole templated conversation (what a user feeds HF)."""
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    return dict(proc(text=[proc.apply_chat_template(msgs, tokenize=False)], images=[image], return_tensors="pt"))


def _hf_answer_logp(model, proc, prompt, answer, image, n_prompt, n_answer):
    """Sum of answer log-probs from a plain HF forward (no position ids: the model makes its own)."""
    enc = _conversation(proc, prompt, answer, image)
    with torch.no_grad():
        logits = model(**enc).logits[0].float()
    target = enc["input_ids"][0, n_prompt:n_prompt + n_answer]
    return torch.log_softmax(logits[n_prompt - 1:n_prompt - 1 + n_answer], -1).gather(-1, target[:, None]).sum()


# ---------------------------------------------------------------- the registry and the checkpoints


def test_registry_one_entry_per_family_and_clear_errors():
    assert family_of_model_type("qwen2_5_vl").positions == "mrope" and spec("smolvlm").name == "idefics3"
    assert {FAMILY_SPECS[f].positions for f in ("llava", "llava_onevision", "idefics3")} == {"mask"}
    with pytest.raises(ValueError, match=r"unsupported model type 'gemma3'; supported model types: \[.*'qwen3_vl'"):
        family_of_model_type("gemma3")
    with pytest.raises(ValueError, match="unknown model family 'qwen9'"):
        spec("qwen9")


def test_qwen_tokenizer_files_are_the_hub_bytes(paths):
    # sha256 of Qwen-VL's vocab.json / merges.txt (git blobs 4783fe10… / 20024bfe…, SOURCE.md)
    for fam in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
        assert hashlib.sha256((paths[fam] / "vocab.json").read_bytes()).hexdigest().startswith("ca10d7e9fb3ed185")
        assert hashlib.sha256((paths[fam] / "merges.txt").read_bytes()).hexdigest().startswith("599bab5407508877")
    assert (FIXTURES / "qwen2_5_vl" / "SOURCE.md").is_file() and (FIXTURES / "idefics3" / "SOURCE.md").is_file()


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_real_token_ids_and_layout(paths, loaded, family):
    model, proc = loaded[family]
    tok = proc.tokenizer
    if family == "idefics3":
        assert tok.convert_tokens_to_ids(["<image>", "<end_of_utterance>"]) == [49190, 49279]
        assert tok.eos_token == "<end_of_utterance>" and answer_prefix(proc) in ("", " ")
    else:
        assert tok.convert_tokens_to_ids(["<|image_pad|>", "<|video_pad|>", "<|im_end|>"]) == [151655, 151656, 151645]
        assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    system = "You are a helpful assistant." in prompt_text(proc, "hi", "image")
    assert system == (family in ("qwen2_vl", "qwen2_5_vl"))  # Qwen3-VL's template has no default system turn
    hub = json.loads((FIXTURES / family / "config.json").read_text())
    assert model.config.model_type == hub["model_type"]


# ---------------------------------------------------------------- tokens: labels and the whole conversation


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_labelled_tokens_are_the_answer_and_prompt_plus_answer_is_the_conversation(loaded, family):
    _, proc = loaded[family]
    tok = proc.tokenizer
    images = _images()
    prompt = encode_prompts(proc, PROMPTS, images, "image")
    chosen = encode_answers(proc, CHOSEN)
    for i in range(2):
        n = int(chosen["attention_mask"][i].sum())
        answer = chosen["input_ids"][i, :n].tolist()
        assert tok.decode(answer[:-1]).strip() == CHOSEN[i] and tok.convert_ids_to_tokens(answer[-1]) == END[family]
        ids = prompt["input_ids"][i][prompt["attention_mask"][i].bool()].tolist() + answer
        whole = _conversation(proc, PROMPTS[i], CHOSEN[i], images[i])["input_ids"][0].tolist()
        assert whole[:len(ids)] == ids and tok.decode(whole[len(ids):]).strip() == ""  # only the turn's "\n" after


def test_smolvlm_answers_start_with_the_space_the_template_puts_there(loaded):
    _, proc = loaded["idefics3"]
    assert prompt_text(proc, "Is it red?", "image").endswith("Assistant:")  # no trailing space
    assert answer_prefix(proc) == " "
    yes, no = yes_no_ids(proc)
    assert 9230 in yes and 10539 not in yes  # " Yes", what the model emits after "Assistant:"


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_yes_no_ids_are_the_first_tokens_after_the_generation_prompt(loaded, family):
    _, proc = loaded[family]
    image = _images(1)
    yes, no = yes_no_ids(proc)
    for word, ids in (("Yes", yes), ("No", no), ("yes", yes), ("no", no)):
        whole = _conversation(proc, PROMPTS[1], word, image[0])["input_ids"][0].tolist()
        n_prompt = int(encode_prompts(proc, PROMPTS[1:], image, "image")["attention_mask"].sum())
        assert whole[n_prompt] in ids, (word, proc.tokenizer.convert_ids_to_tokens(whole[n_prompt:]))
    assert not set(yes) & set(no)


# ---------------------------------------------------------------- log-probs


def check_logps_against_hf(model, proc) -> None:
    """Plain and packed [prompt | chosen | rejected] log-probs equal a plain Hugging Face forward of each
    templated conversation (the model computing its own positions)."""
    images = _images()
    prompt = encode_prompts(proc, PROMPTS, images, "image")
    chosen, rejected = encode_answers(proc, CHOSEN), encode_answers(proc, REJECTED)
    with torch.no_grad():
        plain = [plain_logps(model, prompt, a)[0] for a in (chosen, rejected)]
        packed = [out[0] for out in packed_logps(model, prompt, [chosen, rejected])]
    for j, (texts, ans) in enumerate(((CHOSEN, chosen), (REJECTED, rejected))):
        torch.testing.assert_close(packed[j], plain[j], rtol=1e-5, atol=1e-4)
        for i in range(2):
            hf = _hf_answer_logp(model, proc, PROMPTS[i], texts[i], images[i], int(prompt["attention_mask"][i].sum()),
                                 int(ans["attention_mask"][i].sum()))
            assert abs(plain[j][i] - hf) <= 1e-4 * abs(hf), (j, i, plain[j][i], hf)


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_plain_and_packed_logps_equal_a_plain_hf_forward(loaded, family):
    check_logps_against_hf(*loaded[family])


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_packed_gradients_equal_plain(paths, family):
    model, proc = load_model(ModelConfig(path=str(paths[family]), device="cpu"), LoraConfig(r=4, alpha=8),
                             trainable=True)
    model.eval()  # no dropout: the two layouts see the same weights
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02, generator=torch.Generator().manual_seed(len(name)))
    prompt = encode_prompts(proc, PROMPTS, _images(), "image")
    chosen, rejected = encode_answers(proc, CHOSEN), encode_answers(proc, REJECTED)
    grads = []
    for packed in (False, True):
        model.zero_grad()
        outs = packed_logps(model, prompt, [chosen, rejected]) if packed else \
            [plain_logps(model, prompt, chosen), plain_logps(model, prompt, rejected)]
        (outs[0][0] - 0.5 * outs[1][0]).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0] and grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6)


def _train_cfg(path, pairs, out, *overrides):
    return load(TrainConfig, None, [f"model.path={path}", f"data.train={pairs}", f"output_dir={out}", "progress=false",
                                    "lora.r=4", "lr=1e-3", "warmup_ratio=0", "data.shuffle=false", "max_steps=1",
                                    *overrides])


@pytest.mark.parametrize("family", VLM_FAMILIES)
@pytest.mark.parametrize("batch_size", [1, 2])
def test_step_1_logged_logps_equal_a_plain_hf_forward(paths, loaded, family, batch_size, tmp_path):
    pairs = toy_pairs(tmp_path / "data", n=4)
    if batch_size == 2:  # answers of different lengths: padding in the batch
        rows = [json.loads(line) for line in pairs.read_text().splitlines()]
        rows[1]["chosen"] = "green, and a small blue dot near the top left corner"
        pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    train(_train_cfg(paths[family], pairs, tmp_path / "run", f"batch_size={batch_size}"))
    logged = read_metrics(tmp_path / "run")[0]
    model, proc = loaded[family]
    recs = read_pairs(pairs, pairs.parent)[:batch_size]
    expect = {}
    for side in ("chosen", "rejected"):
        per_token = []
        for r in recs:
            image = Image.open(pairs.parent / r.media[0]).convert("RGB")
            answer = encode_answers(proc, [getattr(r, side)])
            n_prompt = int(encode_prompts(proc, [r.prompt], [image], "image")["attention_mask"].sum())
            n = int(answer["attention_mask"].sum())
            per_token.append(float(_hf_answer_logp(model, proc, r.prompt, getattr(r, side), image, n_prompt, n)) / n)
        expect[side] = sum(per_token) / len(per_token)
    for side in ("chosen", "rejected"):
        assert abs(logged[f"logps/{side}"] - expect[side]) <= 1e-4 * abs(expect[side]), (side, logged, expect)
    assert logged["loss"] == pytest.approx(math.log(2), abs=1e-5)  # fresh LoRA = its reference


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_precomputed_reference_equals_live(paths, family, tmp_path):
    pairs = toy_pairs(tmp_path / "data", n=4)
    runs = {}
    for pre in ("false", "true"):
        train(_train_cfg(paths[family], pairs, tmp_path / pre, "batch_size=2", "max_steps=2",
                         f"precompute_reference={pre}"))
        runs[pre] = read_metrics(tmp_path / pre)
    assert len(list((pairs.parent / "pairs.jsonl.refcache").glob("*.pt"))) == 1
    for live, cached in zip(runs["false"], runs["true"]):
        assert cached["loss"] == pytest.approx(live["loss"], rel=1e-4, abs=1e-6)
        assert cached["logps/chosen"] == pytest.approx(live["logps/chosen"], rel=1e-4)


# ---------------------------------------------------------------- evaluation, generation, 4-bit, LoRA targets


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_logits_mode_margins_equal_a_plain_forward_with_and_without_prefix_reuse(loaded, family):
    from mmpo.eval.answering import Item, answer_items

    model, proc = loaded[family]
    images = {"a.png": color_image("red", size=48), "b.png": color_image("blue", size=48, seed=3)}
    questions = ["Is there a red square?", "Is there a blue square?", "Is there a cat?"]
    items = [Item((m, q), m, q) for m in images for q in questions]
    yes, no = yes_no_ids(proc)
    hf = {}
    for it in items:
        batch = encode_prompts(proc, [it.prompt], [images[it.media]], "image")
        batch.pop("position_ids", None)
        with torch.no_grad():
            logits = model(**batch).logits[0, -1].float()  # the model's own positions
        hf[it.key] = float(torch.logsumexp(logits[yes], -1) - torch.logsumexp(logits[no], -1))
    for reuse in (False, True):
        got = answer_items(model, proc, items, "image", images.__getitem__, mode="logits", batch_size=4,
                           prefix_reuse=reuse)
        for key, (answer, margin) in got.items():
            assert margin == pytest.approx(hf[key], abs=1e-4), (reuse, key)
            assert answer == ("yes" if margin > 0 else "no")
    plain = margins_plain(model, proc, [it.prompt for it in items[:2]], [images["a.png"]] * 2, "image", (yes, no))
    assert plain == pytest.approx([hf[items[0].key], hf[items[1].key]], abs=1e-4)


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_left_padded_batched_generation_equals_one_by_one(loaded, family):
    model, proc = loaded[family]
    images = _images()
    batched = generate_answers(model, proc, PROMPTS, images, "image", max_new_tokens=4)
    alone = [generate_answers(model, proc, [p], [m], "image", max_new_tokens=4)[0] for p, m in zip(PROMPTS, images)]
    assert batched == alone


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_default_lora_targets_the_language_model_only(paths, family):
    model, _ = load_model(ModelConfig(path=str(paths[family]), device="cpu"), LoraConfig(r=4, alpha=8), trainable=True)
    lora = [n for n, _ in model.named_parameters() if "lora_A" in n]
    text = "text_model" if family == "idefics3" else "language_model"
    assert len(lora) == 2 * 7 and all(text in n for n in lora)  # 2 layers x q k v o gate up down


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_4bit_lora_trains_on_cpu(paths, family):
    bnb = pytest.importorskip("bitsandbytes")
    model, proc = load_model(ModelConfig(path=str(paths[family]), device="cpu", load_in_4bit=True),
                             LoraConfig(r=4, alpha=8), trainable=True)
    linear4 = [n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    text = "text_model" if family == "idefics3" else "language_model"
    assert linear4 and all(text in n for n in linear4)  # vision tower, projector, lm_head unquantised
    prompt = encode_prompts(proc, PROMPTS, _images(), "image")
    chosen = encode_answers(proc, CHOSEN)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = -plain_logps(model, prompt, chosen)[0].mean()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if "lora_A" in n)


def test_qwen_media_rows_split_patches_by_grid(loaded):
    _, proc = loaded["qwen2_5_vl"]
    images = _images(3)
    batch = encode_prompts(proc, ["a", "b", "c"], images, "image")
    rows = media_rows(batch, "pixel_values", [1, 1, 1])
    alone = [encode_prompts(proc, ["x"], [im], "image")["pixel_values"] for im in images]
    assert [r.shape[0] for r in rows] == [a.shape[0] for a in alone] and len(set(r.shape[0] for r in rows)) > 1
    for r, a in zip(rows, alone):
        torch.testing.assert_close(r, a)


def test_collated_batch_carries_token_types_and_trains(paths, loaded, tmp_path):
    _, proc = loaded["qwen2_5_vl"]
    pairs = toy_pairs(tmp_path / "data", n=2)
    batch = PairCollator(proc, str(pairs.parent))(read_pairs(pairs, pairs.parent))
    assert batch.prompt["mm_token_type_ids"].shape == batch.prompt["input_ids"].shape
    assert set(batch.prompt["mm_token_type_ids"].unique().tolist()) == {0, 1}


# ---------------------------------------------------------------- several images per pair

MULTI = ["llava_onevision", "qwen2_5_vl", "idefics3"]


@pytest.fixture(scope="module")
def multi(tmp_path_factory, loaded):
    root = tmp_path_factory.mktemp("multi")
    onevision = real_format_model("llava_onevision", root)
    return {"llava_onevision": load_model(ModelConfig(path=str(onevision), device="cpu")),
            **{f: loaded[f] for f in MULTI[1:]}}


def _multi_pairs(root, n_images, name="multi.jsonl", prompt=None, n_rows=2):
    """Pairs with `n_images` images each (sizes differ, so tilings and grids differ per image)."""
    from mmpo.records import PairRecord, write_jsonl

    (root / "img").mkdir(parents=True, exist_ok=True)
    recs = []
    for i in range(n_rows):
        rels = []
        for j in range(n_images):
            rel = f"img/m{i}_{j}.png"
            color_image(["red", "green", "blue"][j % 3], size=40 + 8 * j, seed=10 * i + j).save(root / rel)
            rels.append(rel)
        text = prompt or ("Compare " + " and ".join(["<image>"] * n_images) + ": which one is red?" if i == 0
                          else "Which of these images is red?")
        recs.append(PairRecord(id=f"m{i}", media=tuple(rels), media_type="image", prompt=text,
                               chosen="The first one.", rejected=f"Image {n_images}."))
    write_jsonl(root / name, recs)
    return root / name


@pytest.mark.parametrize("family", MULTI)
@pytest.mark.parametrize("n_images", [2, 3])
def test_several_images_packed_equals_plain_and_every_image_counts(multi, family, n_images, tmp_path):
    from mmpo.requirements import pair_logps

    model, proc = multi[family]
    pairs = _multi_pairs(tmp_path, n_images)
    recs = read_pairs(pairs, tmp_path)
    batch = PairCollator(proc, str(tmp_path))(recs)
    with torch.no_grad():
        packed = pair_logps(model, batch, set(), shared_prefix=True)
        plain = pair_logps(model, batch, set(), shared_prefix=False)
    for key in ("chosen", "rejected"):
        torch.testing.assert_close(getattr(packed, key), getattr(plain, key), rtol=1e-5, atol=1e-4)
    # each image reaches the model: replacing any one of them changes the log-probs of its row
    for j in range(n_images):
        color_image("yellow", size=40 + 8 * j, seed=99).save(tmp_path / f"img/m0_{j}.png")
        with torch.no_grad():
            changed = pair_logps(model, PairCollator(proc, str(tmp_path))(recs), set(), shared_prefix=True)
        assert not torch.allclose(changed.chosen[0], packed.chosen[0]), j
        assert torch.equal(changed.chosen[1], packed.chosen[1])  # the other row's images did not change
        color_image(["red", "green", "blue"][j % 3], size=40 + 8 * j, seed=j).save(tmp_path / f"img/m0_{j}.png")


@pytest.mark.parametrize("family", MULTI)
def test_several_images_match_the_processors_own_encoding_and_the_length_preflight(multi, family, tmp_path):
    from mmpo.lengths import MediaTokens, record_length
    from mmpo.media import load_media

    _, proc = multi[family]
    pairs = _multi_pairs(tmp_path, 3)
    recs = read_pairs(pairs, tmp_path)
    batch = PairCollator(proc, str(tmp_path))(recs)
    for i, r in enumerate(recs):
        images = load_media(tmp_path, r.media, "image")
        content = ([{"type": "text", "text": "Compare "}, {"type": "image"}, {"type": "text", "text": " and "},
                    {"type": "image"}, {"type": "text", "text": " and "}, {"type": "image"},
                    {"type": "text", "text": ": which one is red?"}] if i == 0
                   else [{"type": "image"}] * 3 + [{"type": "text", "text": r.prompt}])
        text = proc.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                        tokenize=False)
        own = proc(text=[text], images=[images], return_tensors="pt")["input_ids"][0].tolist()
        ours = batch.prompt["input_ids"][i][batch.prompt["attention_mask"][i].bool()].tolist()
        assert ours == own
        n_answer = max(int(batch.chosen["attention_mask"][i].sum()), int(batch.rejected["attention_mask"][i].sum()))
        assert record_length(r, proc, MediaTokens(proc, 8), tmp_path) == len(own) + n_answer


def test_several_images_train_and_a_single_image_family_refuses_them(multi, paths, tmp_path):
    pairs = _multi_pairs(tmp_path / "data", 2, n_rows=4)
    train(_train_cfg(paths["qwen2_5_vl"], pairs, tmp_path / "run", "batch_size=2", "max_steps=2",
                     "loss=[{name: dpo}, {name: mdpo_conditional}]"))
    rows = read_metrics(tmp_path / "run")
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) for r in rows)
    from helpers import tiny_model

    llava = tiny_model("llava", tmp_path)
    with pytest.raises(ValueError, match=r"multi.jsonl:1: 2 images in one record, but llava models take one per "
                                         r"prompt; families that take several images: llava_onevision, .*idefics3"):
        train(_train_cfg(llava, pairs, tmp_path / "refused"))


@pytest.mark.parametrize("prompt", ["<image> and <image> and <image>: which?", "Just one <image> here."])
def test_image_markers_that_do_not_match_the_media_name_the_record(multi, prompt, tmp_path):
    _, proc = multi["qwen2_5_vl"]
    pairs = _multi_pairs(tmp_path, 2, prompt=prompt)
    with pytest.raises(ValueError, match=r"multi.jsonl:1: the prompt has \d <image> marker\(s\) but the record has 2"):
        PairCollator(proc, str(tmp_path))(read_pairs(pairs, tmp_path))


def test_a_leading_marker_equals_images_first(multi):
    _, proc = multi["qwen2_5_vl"]
    assert prompt_text(proc, "<image>\nWhat is it?", "image") == prompt_text(proc, "What is it?", "image")


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["fsdp", "ddp"])
def test_fsdp2_and_ddp_two_processes_equal_one_on_qwen2_5_vl(paths, tmp_path, parallel):
    """As tests/test_fsdp.py does for LLaVA: FSDP2 (or DDP) over 2 CPU processes logs what one process logs."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    from mmpo.app.cli import main

    repo = Path(__file__).resolve().parents[1]
    pairs = toy_pairs(tmp_path / "data", n=8)
    args = ["--config", str(repo / "configs/train/tiny_cpu.yaml"), f"model.path={paths['qwen2_5_vl']}",
            f"data.train={pairs}", "max_steps=3"]
    assert main(["train", *args, f"output_dir={tmp_path / 'one'}", "batch_size=4"]) == 0
    launch = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
              str(repo / f"configs/accelerate/{parallel}.yaml"), "--num_processes", "2", "-m", "mmpo", "train"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([*launch, *args, f"output_dir={tmp_path / 'two'}", "batch_size=2"], env=env,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["parallel"] == parallel
    one, two = ([r for r in read_metrics(tmp_path / d) if "loss" in r] for d in ("one", "two"))
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3]
    for x, y in zip(one, two):
        for key in ("loss", "grad_norm", "logps/chosen"):
            assert y[key] == pytest.approx(x[key], rel=1e-5, abs=1e-6), (x["step"], key)
    a, b = (load_file(tmp_path / d / "adapter" / "adapter_model.safetensors") for d in ("one", "two"))
    assert a.keys() == b.keys() and max(float((a[k] - b[k]).norm() / max(a[k].norm(), 1e-12)) for k in a) < 1e-4


# ---------------------------------------------------------------- Qwen-VL video, PaMi bags, rejected media


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_qwen_video_logps_equal_a_plain_hf_forward(loaded, family):
    model, proc = loaded[family]
    rng = np.random.default_rng(0)
    videos = [rng.integers(0, 255, (4, 56, 56, 3), dtype=np.uint8), rng.integers(0, 255, (4, 56, 84, 3), dtype=np.uint8)]
    prompt = encode_prompts(proc, PROMPTS, videos, "video")
    chosen = encode_answers(proc, CHOSEN)
    with torch.no_grad():
        plain = plain_logps(model, prompt, chosen)[0]
        packed = packed_logps(model, prompt, [chosen])[0][0]
        for i in range(2):
            msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": PROMPTS[i]}]},
                    {"role": "assistant", "content": [{"type": "text", "text": CHOSEN[i]}]}]
            enc = proc(text=[proc.apply_chat_template(msgs, tokenize=False)], videos=[videos[i]], return_tensors="pt",
                       **({"do_sample_frames": False} if family == "qwen3_vl" else {}))  # the frames mmpo sampled
            n, n_prompt = int(chosen["attention_mask"][i].sum()), int(prompt["attention_mask"][i].sum())
            target = enc["input_ids"][0, n_prompt:n_prompt + n]
            assert target.tolist() == chosen["input_ids"][i, :n].tolist()
            logp = torch.log_softmax(model(**enc).logits[0].float(), -1)[n_prompt - 1:n_prompt - 1 + n]
            hf = logp.gather(-1, target[:, None]).sum()
            assert abs(plain[i] - hf) <= 1e-4 * abs(hf)
    torch.testing.assert_close(packed, plain, rtol=1e-5, atol=1e-4)


def test_pami_bag_and_rejected_media_on_qwen2_5_vl(paths, loaded, tmp_path):
    import dataclasses

    from mmpo.records import AugSpec
    from mmpo.requirements import pair_logps

    model, proc = loaded["qwen2_5_vl"]
    pairs = toy_pairs(tmp_path / "data", n=3)
    bag = (AugSpec("mdpo_crop", {}, 1), AugSpec("gaussian_noise", {"std": 80.0}, 2))
    recs = [dataclasses.replace(r, rejected_bag=bag, rejected_media=("img/2.png",) if i == 0 else None)
            for i, r in enumerate(read_pairs(pairs, pairs.parent))]
    batch = PairCollator(proc, str(pairs.parent), requires=frozenset({"bag", "corrupt"}))(recs)
    with torch.no_grad():
        out = pair_logps(model, batch, {"bag", "corrupt"}, shared_prefix=True, js_top_k=0)
        # each bag clip equals a forward of the augmented image on its own (patches are not sliced by row)
        from mmpo.media import load_media
        from mmpo.requirements import augment_each

        for j in range(2):
            for i, r in enumerate(recs):
                alone = encode_prompts(proc, [r.prompt], [augment_each(load_media(pairs.parent, r.media, "image"),
                                                                       bag[j])], "image")
                ans = encode_answers(proc, [r.chosen])
                assert plain_logps(model, alone, ans)[0][0] == pytest.approx(float(out.extra["bag"][i, j]), rel=1e-4)
        rejected = encode_prompts(proc, [recs[0].prompt], [load_media(pairs.parent, ("img/2.png",), "image")], "image")
        expect = plain_logps(model, rejected, encode_answers(proc, [recs[0].rejected]))[0][0]
    assert float(out.rejected[0]) == pytest.approx(float(expect), rel=1e-4)
    assert out.extra["bag_distance"].shape == (3, 2) and (out.extra["bag_distance"] > 0).all()
    assert out.extra["corrupt"].shape == (3,)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_qwen_video_keeps_mmpos_frames_and_the_preflight_counts_its_tokens(loaded, family, tmp_path):
    from videos import make_frames, write_clip

    from mmpo.lengths import MediaTokens, record_length
    from mmpo.records import PairRecord, write_jsonl

    _, proc = loaded[family]
    write_clip(tmp_path / "wide.mp4", make_frames(T=8, H=48, W=96))
    rec = PairRecord(id="v", media=("wide.mp4",), media_type="video", prompt="What moves?", chosen="A square.",
                     rejected="A circle.")
    write_jsonl(tmp_path / "v.jsonl", [rec])
    rec = read_pairs(tmp_path / "v.jsonl", tmp_path)[0]
    batch = PairCollator(proc, str(tmp_path), num_frames=8)([rec])
    assert int(batch.prompt["video_grid_thw"][0, 0]) == 4  # 8 frames / temporal patch 2: none dropped
    n_answer = max(int(batch.chosen["attention_mask"].sum()), int(batch.rejected["attention_mask"].sum()))
    assert record_length(rec, proc, MediaTokens(proc, 8), tmp_path) == int(batch.prompt["attention_mask"].sum()) + n_answer


def test_a_video_marker_places_the_video(multi):
    _, proc = multi["qwen2_5_vl"]
    assert prompt_text(proc, "<video>\nWhat moves?", "video") == prompt_text(proc, "What moves?", "video")
    text = prompt_text(proc, "Watch <video> and say what moves.", "video")
    assert "Watch <|vision_start|><|video_pad|><|vision_end|> and say what moves." in text


def test_several_rejected_images_one_for_one(multi, tmp_path):
    import dataclasses

    from mmpo.media import load_media
    from mmpo.requirements import pair_logps

    model, proc = multi["idefics3"]
    pairs = _multi_pairs(tmp_path, 2)
    recs = read_pairs(pairs, tmp_path)
    color_image("yellow", size=40, seed=7).save(tmp_path / "img/r0.png")
    recs = [dataclasses.replace(recs[0], rejected_media=("img/r0.png", recs[0].media[1]), rejected=recs[0].chosen),
            recs[1]]
    with torch.no_grad():
        out = pair_logps(model, PairCollator(proc, str(tmp_path))(recs), set(), shared_prefix=True)
        rejected = encode_prompts(proc, [recs[0].prompt], [load_media(tmp_path, recs[0].rejected_media, "image")],
                                  "image")
        expect = plain_logps(model, rejected, encode_answers(proc, [recs[0].chosen]))[0][0]
    assert float(out.rejected[0]) == pytest.approx(float(expect), rel=1e-4)
    assert float(out.rejected[0]) != pytest.approx(float(out.chosen[0]), rel=1e-4)  # same text, other image
    bad = [dataclasses.replace(recs[0], rejected_media=("img/r0.png",))]
    with pytest.raises(ValueError, match=r"multi.jsonl:1: 'rejected_media' has 1 item\(s\) but 'media' has 2"):
        PairCollator(proc, str(tmp_path))(bad)


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_fsdp_finds_one_decoder_layer_list(loaded, family):
    """FSDP2 shards each decoder layer: every family's layer list is found (SmolVLM's is `text_model.layers`)."""
    from mmpo.distributed import decoder_layers

    model, _ = loaded[family]
    layers = decoder_layers(model)
    assert layers and all(type(layer).__name__.endswith("DecoderLayer") for layer in layers)
