"""One-off: the Qwen2 tokenizer (LLaVA-OneVision's language model) from llama.cpp's GGUF vocabulary.

The hub's Qwen2 `tokenizer.json` is not available offline, but llama.cpp ships the same byte-level BPE
vocabulary as `ggml-vocab-qwen2.gguf` (with its own test vectors). This script reads the GGUF with
transformers' built-in GGUF reader (no `gguf` package needed), keeps the 151,643 BPE tokens and their
merges, and rebuilds the tokenizer with transformers' `Qwen2Tokenizer` (NFC normaliser, Qwen2 split
regex, byte-level pre-tokeniser and decoder, as in the hub's tokenizer.json). The special tokens follow
Qwen/Qwen2-0.5B-Instruct: `<|endoftext|>` 151643 (pad), `<|im_start|>` 151644, `<|im_end|>` 151645 (eos).
llama.cpp's 290 `[PADn]` filler entries are dropped (they are not tokens of the hub tokenizer).

It writes `tokenizer.json.gz` (gzip keeps the vendored copy at ~2 MB instead of ~7 MB) and
`tokenizer_config.json` next to itself, then checks every llama.cpp test vector.

Run from the repository root, with llama.cpp's `models/ggml-vocab-qwen2.gguf` (the design notes beside the
project keep a copy under real-format/qwen2-vocab/):
    python mmpo/models/hub_files/llava_onevision/convert_qwen2_gguf.py path/to/ggml-vocab-qwen2.gguf
"""

import gzip
import json
import sys
import tempfile
from pathlib import Path

from tokenizers import AddedToken
from transformers import AutoTokenizer, Qwen2Tokenizer
from transformers.integrations.gguf.gguf_tokenizer_mapping import get_gguf_tokenizer

HERE = Path(__file__).resolve().parent
NUM_BPE_TOKENS = 151643  # Qwen2's BPE vocabulary; the special tokens follow it


def build(gguf_path: str) -> Qwen2Tokenizer:
    arch, meta, _ = get_gguf_tokenizer(gguf_path)
    assert arch == "qwen2" and meta["tokenizer_type"] == "gpt2", (arch, meta.get("tokenizer_type"))
    tokens = meta["tokens"]
    assert tokens[NUM_BPE_TOKENS:NUM_BPE_TOKENS + 3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {t: i for i, t in enumerate(tokens[:NUM_BPE_TOKENS])}
    merges = [tuple(m.split(" ")) for m in meta["merges"]]
    # <|endoftext|> first (the constructor adds it), then the chat markers, so the ids come out in hub order
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                         unk_token=None, model_max_length=32768)
    tok.add_special_tokens({"additional_special_tokens": [AddedToken(t, special=True, normalized=False)
                                                          for t in ("<|im_start|>", "<|im_end|>")]})
    tok.eos_token = "<|im_end|>"  # Qwen2-Instruct ends a turn with <|im_end|>
    return tok


def check_vectors(tok, gguf_path: str) -> int:
    """llama.cpp's own test vectors: `.inp` texts separated by a marker line, `.out` token ids per line."""
    texts = Path(gguf_path + ".inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    ids = Path(gguf_path + ".out").read_text(encoding="utf-8").split("\n")
    for text, want in zip(texts, ids):
        got = tok(text, add_special_tokens=False)["input_ids"]
        assert got == [int(x) for x in want.split()], (text, got, want)
    return len(texts)


def main(gguf_path: str) -> None:
    tok = build(gguf_path)
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [151643, 151644, 151645]
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        raw = json.loads(Path(tmp, "tokenizer.json").read_text(encoding="utf-8"))
        compact = json.dumps(raw, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        with gzip.GzipFile(HERE / "tokenizer.json.gz", "wb", compresslevel=9, mtime=0) as f:
            f.write(compact)
        config = json.loads(Path(tmp, "tokenizer_config.json").read_text(encoding="utf-8"))
        (HERE / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        Path(tmp, "tokenizer.json").write_bytes(compact)
        reloaded = AutoTokenizer.from_pretrained(tmp)
    print(f"{type(reloaded).__name__}: {len(reloaded)} tokens, {check_vectors(reloaded, gguf_path)} llama.cpp "
          f"test vectors reproduced; tokenizer.json.gz {(HERE / 'tokenizer.json.gz').stat().st_size} bytes")


if __name__ == "__main__":
    main(sys.argv[1])
