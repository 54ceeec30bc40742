"""Big pair files: step 1 starts while a thread validates the lines; a bad line still stops the run."""

from __future__ import annotations

import json

import pytest
from helpers import tiny_model, toy_pairs

import mmpo.records.reading as records_mod  # scan_records reads the threshold there
from mmpo.config import TrainConfig, load
from mmpo.records import RecordError, index_lines, iter_raw_lines, scan_records, validate_in_background
from mmpo.trainer import train


@pytest.mark.parametrize("text", ['\ufeff{"a": 1}\n\n  \n{"b": 2}', '{"a": 1}\n \n', "", '\n\n{"x": 1} ',
                                  'x\r\n\r\ny\n', '   \n\t{"a": 1}\n', '\u3000{"a": 1}\n'])
@pytest.mark.parametrize("chunk", [1, 3, 1 << 20])
def test_the_line_index_finds_the_lines_the_validating_reader_reads(text, chunk, tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_text(text, encoding="utf-8")
    offsets, linenos, _ = index_lines(path, chunk_bytes=chunk)
    expected = [(n, off) for n, off, raw in iter_raw_lines(path) if raw.decode("utf-8").strip()]
    assert list(zip(linenos, offsets)) == expected


def test_background_records_equal_the_validated_ones(tmp_path):
    path = toy_pairs(tmp_path)
    full, _ = scan_records(path, "pair", tmp_path, background=False)
    fast = validate_in_background(path, "pair", tmp_path)
    fast.wait()
    assert list(fast) == list(full) and fast.digest == full.digest and fast.media_types == full.media_types


def _with_bad_last_line(tmp_path, problem: str):
    path = toy_pairs(tmp_path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    if problem == "repeat":
        rows.append({**rows[0], "chosen": rows[0]["rejected"], "rejected": rows[0]["chosen"]})
    else:
        rows.append({**rows[1], "id": "x", "media": ["img/nope.png"]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, len(rows)


@pytest.mark.parametrize("problem,message", [("repeat", "field 'id': .* already the id of"),
                                             ("missing", "field 'media': missing media file")])
def test_a_bad_line_found_in_the_background_stops_the_run_before_the_weights_are_saved(problem, message, tmp_path,
                                                                                      monkeypatch):
    monkeypatch.setattr(records_mod, "BACKGROUND_MIN_BYTES", 0)  # as for a file of hundreds of MB
    path, line = _with_bad_last_line(tmp_path / "data", problem)
    records, _ = scan_records(path, "pair", tmp_path / "data")
    assert records._validator is not None  # validated in the background
    records._validator.join()
    with pytest.raises(RecordError, match=rf"pairs.jsonl:{line}: {message}"):
        records[0]  # once found, the next read stops, naming the line
    model = tiny_model("llava", tmp_path)
    cfg = load(TrainConfig, None, [f"model.path={model}", f"data.train={path}", f"output_dir={tmp_path / 'run'}",
                                   "max_steps=1", "batch_size=2", "progress=false", "lora.r=4"])
    with pytest.raises(RecordError, match=rf"pairs.jsonl:{line}: {message}"):
        train(cfg)
    assert not (tmp_path / "run" / "adapter").exists()  # never a finished run on a bad file


def test_skip_mode_validates_everything_first(tmp_path, monkeypatch):
    monkeypatch.setattr(records_mod, "BACKGROUND_MIN_BYTES", 0)
    path, line = _with_bad_last_line(tmp_path, "missing")
    records, skipped = scan_records(path, "pair", tmp_path, on_bad="skip")  # counted before anything is used
    assert records._validator is None and len(skipped) == 1 and f"pairs.jsonl:{line}" in skipped[0]
