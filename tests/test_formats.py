"""Sets in the layouts users bring (tests/fixtures/datasets, see its SOURCE.md): detected, converted with text,
media bytes and pair counts kept, bad rows counted and named, trained on directly, and written back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import tiny_model

from mmpo.config import TrainConfig, load
from mmpo.formats import FORMATS, FormatError, convert, open_source, read_set
from mmpo.formats.writers import WRITERS
from mmpo.metrics import read_metrics
from mmpo.records import RecordError, read_pairs, read_sft
from mmpo.trainer import train

DATA = Path(__file__).parent / "fixtures" / "datasets"
POVID = json.loads((DATA / "povid/povid_preference.json").read_text())[0]
HORSE_Q = "Describe this image in detail."
HORSE_C, HORSE_R = POVID["conversations"][1]["value"], POVID["rejected_conversations"][1]["value"]
HORSE_JPG = (DATA / "povid/data/coco/COCO_train2014_000000353952.jpg").read_bytes()
EMBEDDED_JPG = pq.read_table(DATA / "rlaif-v-dataset/RLAIF-V-Dataset_sample.parquet").column("image").to_pylist()[0]["bytes"]

# source, format, pairs, (prompt, chosen, rejected) of the first pair, its media bytes, skips by reason
PAIR_SETS = [
    ("rlaif-v-dataset", "rlaif_v", 2, (HORSE_Q, HORSE_C, HORSE_R), EMBEDDED_JPG, {}),
    ("rlhf-v-dataset", "rlhf_v", 1, (HORSE_Q, HORSE_C, HORSE_R), EMBEDDED_JPG, {}),
    ("trl-vision-dpo", "trl", 2, (HORSE_Q, HORSE_C, HORSE_R), EMBEDDED_JPG, {}),
    ("vlfeedback/vlfeedback_sample.jsonl", "vlfeedback", 1, (HORSE_Q, HORSE_C, HORSE_R), HORSE_JPG, {}),
    ("povid/povid_preference.json", "povid", 1, (HORSE_Q, HORSE_C, HORSE_R), HORSE_JPG, {}),
    ("hadpo/pope_data.json", "hadpo", 1, ("Is there a horse in the image?", "Yes, there is a horse in the image.",
                                          "No, there is no horse in the image."), HORSE_JPG, {"not_a_pair": 1}),
    ("hadpo/desc_data.json", "hadpo", 1, (HORSE_Q, HORSE_C, HORSE_R), HORSE_JPG, {}),
    ("llamafactory-multimodal-dpo", "llamafactory", 1, (HORSE_Q, HORSE_C, HORSE_R), HORSE_JPG, {}),
    ("llamafactory-sharegpt-dpo/dpo_en_demo.json", "llamafactory", 0, None, None, {"no_media": 5}),
    ("llamafactory-v1/v1_mm_dpo_sample.jsonl", "llamafactory_v1", 1,
     ("Who are they?", "They're Kane and Gretzka from Bayern Munich.", "They're two referees."),
     (DATA / "llamafactory-v1/data/mllm_demo_data/1.jpg").read_bytes(), {}),
    ("llamafactory-v1/v1_dpo_demo.jsonl", "llamafactory_v1", 0, None, None, {"no_media": 3}),
    ("ms-swift-rlhf/dpo_multimodal.jsonl", "swift", 2, ("What is this?", "This is a kitten.", "This is a puppy."),
     (DATA / "ms-swift-rlhf/kitten.png").read_bytes(), {}),
    ("ms-swift-rlhf/dpo_text.jsonl", "swift", 0, None, None, {"no_media": 2}),
    ("mdpo/sample_data.json", "mdpo", 1, None, (DATA / "mdpo/images/llava-reasoning-3730.jpg").read_bytes(), {}),
    ("llava-video-dpo-jsonl/sft_dpo_sample.jsonl", "llava_video_dpo", 1,
     ("What is moving in the video?", "A red square moves across the frame.", "A blue circle bounces up and down."),
     (DATA / "llava-video-dpo-jsonl/videos/1.mp4").read_bytes(), {}),
]
SFT_SETS = [  # source, format, samples, skips
    ("llava-sft/llava_mix_sample.json", "llava", 2, {"no_media": 1}),
    ("llava-sft/llava_video_sample.json", "llava", 1, {}),
    ("llamafactory-mllm-image/mllm_demo.json", "llamafactory_sft", 5, {}),
    ("llamafactory-mllm-video/mllm_video_demo.json", "llamafactory_sft", 2, {}),
    ("llamafactory-v1/v1_multimodal_demo.jsonl", "llamafactory_sft", 5, {}),
]


@pytest.mark.parametrize("src,fmt,n,texts,media,skips", PAIR_SETS, ids=[s[0] for s in PAIR_SETS])
def test_each_layout_is_detected_and_converts_keeping_text_bytes_and_count(src, fmt, n, texts, media, skips, tmp_path):
    out = convert(DATA / src, tmp_path / "set")  # format "auto": detected from the columns
    manifest = json.loads((tmp_path / "set/manifest.json").read_text())
    assert manifest["format"] == fmt
    assert manifest["counts"]["records"] == n and manifest["skipped_by_reason"] == skips
    assert len(manifest["skipped"]) == sum(skips.values())
    assert manifest["content_hashes"]["output"]["pairs.jsonl"]
    pairs = read_pairs(out, media_root=tmp_path / "set")  # media checked to exist under the set's root
    assert len(pairs) == n
    if n:
        if texts is not None:
            assert (pairs[0].prompt, pairs[0].chosen, pairs[0].rejected) == texts
        assert (tmp_path / "set" / pairs[0].media[0]).read_bytes() == media
        assert "<image>" not in pairs[0].prompt and "<video>" not in pairs[0].prompt  # leading markers stripped


@pytest.mark.parametrize("src,fmt,n,skips", SFT_SETS, ids=[s[0] for s in SFT_SETS])
def test_sft_layouts_convert_one_sample_per_answer(src, fmt, n, skips, tmp_path):
    out = convert(DATA / src, tmp_path / "set")
    manifest = json.loads((tmp_path / "set/manifest.json").read_text())
    assert (manifest["format"], manifest["counts"]["records"], manifest["skipped_by_reason"]) == (fmt, n, skips)
    assert len(read_sft(out, media_root=tmp_path / "set")) == n


def test_embedded_images_are_stored_once_by_content(tmp_path):
    convert(DATA / "rlaif-v-dataset", tmp_path / "set")
    pairs = read_pairs(tmp_path / "set/pairs.jsonl")
    files = list((tmp_path / "set/media").rglob("*.jpg"))
    assert len(pairs) == 2 and len(files) == 1 and pairs[0].media == pairs[1].media  # both rows embed the same JPEG


def test_several_images_and_interleaved_markers(tmp_path):
    out = convert(DATA / "llamafactory-mllm-image/mllm_demo.json", tmp_path / "set")
    first = read_sft(out)[0]
    assert first.media == ("source/mllm_demo_data/1.jpg",) * 2  # one path per <image>, in order
    assert first.prompt == ("USER: <image>Who are they?\nASSISTANT: They're Kane and Gretzka from Bayern Munich.\n"
                            "USER: What are they doing?<image>")  # interleaved: kept, history in the prompt


def test_swift_rejected_images_become_rejected_media(tmp_path):
    pairs = read_pairs(convert(DATA / "ms-swift-rlhf/dpo_multimodal.jsonl", tmp_path / "set"))
    assert pairs[0].rejected_media is None and pairs[0].rejected == "This is a puppy."
    assert pairs[1].chosen == pairs[1].rejected and pairs[1].rejected_media == ("source/puppy.png",)


def test_an_unknown_layout_names_the_columns_found(tmp_path):
    (tmp_path / "odd.jsonl").write_text(json.dumps({"question": "q", "good": "a", "bad": "b"}) + "\n")
    with pytest.raises(FormatError, match=r"cannot tell the format from the columns found \['bad', 'good', 'question'\]"):
        convert(tmp_path / "odd.jsonl", tmp_path / "set")


def _malformed(src: str, tmp_path: Path) -> tuple[Path, str]:
    """A copy of `src` whose second row is broken (a required field removed); returns (path, where it is)."""
    dest = tmp_path / "bad"
    shutil.copytree(DATA / src.split("/")[0], dest)
    path = dest / "/".join(src.split("/")[1:]) if "/" in src else dest
    if path.is_dir() and not list(path.glob("*.parquet")):
        path = next(path.glob("*_sample.json"))
    if path.is_dir():  # parquet: a last row without its chosen answer
        f = next(path.glob("*.parquet"))
        table = pq.read_table(f)
        rows = table.to_pylist()
        key = "chosen" if "chosen" in rows[-1] else "text"
        rows.append({**rows[0], key: None})
        import pyarrow as pa
        pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), f)
        return path, f"{f} row {len(rows) - 1}"
    if path.suffix == ".jsonl":
        lines = path.read_text().splitlines()
        path.write_text("\n".join(lines + ["{\"broken\": "]) + "\n")
        return path, f"{path}:{len(lines) + 1}"
    rows = json.loads(path.read_text())
    if isinstance(rows, dict):
        rows["999"] = {"chosen": [], "rejected": ["x"]}
        path.write_text(json.dumps(rows))
        return path, f"{path} row {len(rows) - 1}"
    text_keys = ("chosen", "rejected_conversations", "conversations", "messages", "prompt", "question")
    rows.append({k: v for k, v in rows[0].items() if k not in text_keys})
    path.write_text(json.dumps(rows))
    return path, f"{path} row {len(rows) - 1}"


@pytest.mark.parametrize("src,fmt", [(s[0], s[1]) for s in PAIR_SETS if s[2]] + [(s[0], s[1]) for s in SFT_SETS],
                         ids=[s[0] for s in PAIR_SETS if s[2]] + [s[0] for s in SFT_SETS])
def test_a_malformed_row_is_counted_and_named_or_stops_the_conversion(src, fmt, tmp_path):
    path, where = _malformed(src, tmp_path)
    convert(path, tmp_path / "set", fmt)
    manifest = json.loads((tmp_path / "set/manifest.json").read_text())
    assert manifest["counts"]["skipped"] >= 1 and any(s.startswith(where + ": ") for s in manifest["skipped"])
    with pytest.raises(RecordError) as err:  # stops at the first row it cannot map, naming it
        convert(path, tmp_path / "set2", fmt, on_bad="error")
    assert str(err.value) == manifest["skipped"][0]


class _TinyModels(dict):
    """Tiny checkpoints by media type, made on first use (an image-only selection builds no video model)."""

    def __init__(self, root: Path):
        super().__init__()
        self.root = root

    def __missing__(self, media_type: str) -> Path:
        self[media_type] = tiny_model("llava" if media_type == "image" else "llava_next_video", self.root)
        return self[media_type]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _TinyModels(tmp_path_factory.mktemp("formats_train"))


TRAINABLE = [(s[0], s[1], "video" if "video" in s[0] else "image", sum(s[5].values())) for s in PAIR_SETS if s[2]]


@pytest.mark.parametrize("src,fmt,media_type,skips", TRAINABLE, ids=[t[0] for t in TRAINABLE])
def test_train_reads_each_layout_directly_for_a_step(src, fmt, media_type, skips, tiny, tmp_path):
    """`data.train: {format, path}`: validated before step 1, each row's media written when a batch reads it."""
    cfg = load(TrainConfig, None, [f"model.path={tiny[media_type]}", f"output_dir={tmp_path / 'run'}",
                                   f"data.train={{format: {fmt}, path: {DATA / src}}}", "max_steps=1", "batch_size=1",
                                   "progress=false", "lora.r=4", "model.num_frames=2",
                                   f"data.on_bad_record={'skip' if skips else 'error'}"])
    assert (cfg.data.format, cfg.data.train) == (fmt, str(DATA / src))
    run = train(cfg)
    assert len(read_metrics(run)) == 1
    assert json.loads((run / "summary.json").read_text())["skipped_records"] == skips
    written = [p for p in (run / "data").rglob("*") if p.is_file()] + list((run / "data").glob("source"))
    assert written  # the batch's media: stored bytes, or the link to the source folder


def test_train_stops_before_step_1_naming_a_bad_row_or_counts_it(tiny, tmp_path):
    path, where = _malformed("rlaif-v-dataset", tmp_path)
    args = [f"model.path={tiny['image']}", f"data.train={{format: rlaif_v, path: {path}}}", "max_steps=1",
            "batch_size=1", "progress=false", "lora.r=4"]
    with pytest.raises(RecordError, match=rf"^{where}: missing_field"):
        train(load(TrainConfig, None, args + [f"output_dir={tmp_path / 'e'}"]))
    assert not (tmp_path / "e" / "metrics.jsonl").exists()
    run = train(load(TrainConfig, None, args + [f"output_dir={tmp_path / 's'}", "data.on_bad_record=skip"]))
    assert json.loads((run / "summary.json").read_text())["skipped_records"] == 1


@pytest.mark.parametrize("target", sorted(WRITERS))
def test_round_trip_through_each_trainers_layout_keeps_ids_text_and_bytes(target, tmp_path):
    """mmpo -> TRL / LLaMA-Factory / ms-swift -> mmpo is the identity on ids, texts and media bytes."""
    start = convert(DATA / "povid/povid_preference.json", tmp_path / "a")
    convert(DATA / "ms-swift-rlhf/dpo_multimodal.jsonl", tmp_path / "b")
    pairs = read_pairs(start) + [p for p in read_pairs(tmp_path / "b/pairs.jsonl") if p.rejected_media is None]
    roots = {p.id: (tmp_path / "a" if p.source == "convert:povid" else tmp_path / "b") for p in pairs}
    written = []
    for root in {*roots.values()}:
        group = [p for p in pairs if roots[p.id] == root]
        written.append(WRITERS[target](group, root, tmp_path / "x" / root.name))
    back = []
    for i, path in enumerate(written):
        assert open_source(path).format.name == target.replace("swift", "swift")
        back += read_pairs(convert(path, tmp_path / f"back{i}"), media_root=tmp_path / f"back{i}")
    roots_back = {p.id: tmp_path / f"back{i}" for i, path in enumerate(written)
                  for p in read_pairs(tmp_path / f"back{i}/pairs.jsonl")}
    assert sorted(p.id for p in back) == sorted(p.id for p in pairs)
    by_id = {p.id: p for p in back}
    for p in pairs:
        q = by_id[p.id]
        assert (q.prompt, q.chosen, q.rejected, q.media_type) == (p.prompt, p.chosen, p.rejected, p.media_type)
        assert [(roots_back[q.id] / m).read_bytes() for m in q.media] == [(roots[p.id] / m).read_bytes() for m in p.media]


def test_llamafactory_export_has_its_dataset_info_entry(tmp_path):
    pairs = read_pairs(convert(DATA / "povid/povid_preference.json", tmp_path / "a"))
    WRITERS["llamafactory"](pairs, tmp_path / "a", tmp_path / "lf")
    info = json.loads((tmp_path / "lf/dataset_info.json").read_text())
    assert info["mmpo_pairs"]["columns"]["images"] == "images" and info["mmpo_pairs"]["ranking"] is True
    row = json.loads((tmp_path / "lf/mmpo_pairs.json").read_text())[0]
    assert row["conversations"][0]["value"] == "<image>" + HORSE_Q  # one tag per image, as LLaMA-Factory counts them


def test_registry_lists_every_format():
    assert {"mmpo", "rlaif_v", "rlhf_v", "vlfeedback", "trl", "llamafactory", "llamafactory_v1", "swift", "povid",
            "hadpo", "mdpo", "llava_video_dpo", "llava", "llamafactory_sft"} == set(FORMATS)


@pytest.mark.parametrize("name,media_type", [("llava_mix_sample.json", "image"), ("llava_video_sample.json", "video")])
def test_builders_read_llava_conversation_json_as_is(name, media_type, tmp_path):
    """llava_v1_5_mix665k / LLaVA-Video-178K files feed `mmpo build augment` without a conversion."""
    from mmpo.builders.augment import AugmentConfig
    from mmpo.builders.augment import build as build_augment

    root = DATA / "llava-sft"
    samples = read_set(root / name, "sft", media_root=root)
    assert {s.media_type for s in samples} == {media_type}
    assert samples[0].prompt in ("What animal is in the picture?", "What moves in the video?")  # <image>\n stripped
    out = build_augment(load(AugmentConfig, None, [f"in_sft={root / name}", f"media_root={root}", "progress=false",
                                                   f"out_dir={tmp_path / 'aug'}", "num_candidates=2", "num_frames=2"]))
    pairs = read_pairs(out / "pairs.jsonl", media_root=root)
    assert len(pairs) == len(samples) and all(p.rejected_bag and p.chosen == p.rejected for p in pairs)
    assert [p.prompt for p in pairs] == [s.prompt for s in samples] and pairs[0].media == samples[0].media


def test_difficulty_builder_input_may_be_a_pair_set_in_another_layout(caplog):
    pairs = read_set(DATA / "povid/povid_preference.json", "pair", media_root=DATA / "povid")
    assert len(pairs) == 1 and pairs[0].media == ("data/coco/COCO_train2014_000000353952.jpg",)
    assert read_set(DATA / "rlaif-v-dataset", "pair") == []  # images inside the rows: named, and `data convert` suggested
    assert "row 0: embedded_media: media stored in the rows: run `mmpo data convert` first" in caplog.text


def test_the_record_readers_name_the_reader_of_other_layouts():
    """mmpo.records reads mmpo's own JSONL only (formats builds on records, not the reverse); another layout is
    refused naming the file and what reads it."""
    with pytest.raises(RecordError, match=r"povid_preference.json: not an mmpo record file .*mmpo.formats.read_set"):
        read_pairs(DATA / "povid/povid_preference.json")


def test_trl_rows_place_interleaved_images_as_typed_parts(tmp_path):
    import dataclasses

    from mmpo.records import to_trl_rows

    pair = read_pairs(convert(DATA / "povid/povid_preference.json", tmp_path / "a"))[0]
    two = dataclasses.replace(pair, media=pair.media * 2, prompt="Compare <image> with <image> please.")
    row = to_trl_rows([pair, two], tmp_path / "a")
    assert row[0]["prompt"][0]["content"] == HORSE_Q  # media first: TRL adds the image part itself
    assert row[1]["prompt"][0]["content"] == [{"type": "text", "text": "Compare "}, {"type": "image"},
                                              {"type": "text", "text": " with "}, {"type": "image"},
                                              {"type": "text", "text": " please."}]
    assert len(row[1]["images"]) == 2
    back = read_pairs(convert(WRITERS["trl"]([two], tmp_path / "a", tmp_path / "trl"), tmp_path / "b"))[0]
    assert (back.id, back.prompt, len(back.media)) == (two.id, two.prompt, 2)


def test_a_repeated_id_is_counted_and_named_or_stops(tmp_path):
    rows = [json.loads(line) for line in (DATA / "ms-swift-rlhf/dpo_multimodal.jsonl").read_text().splitlines()]
    rows = [{**rows[0], "id": "same"}, {**rows[1], "id": "other"}, {**rows[0], "id": "same", "rejected_messages": [
        rows[0]["messages"][0], {"role": "assistant", "content": "This is a cat."}]}]
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(DATA / "ms-swift-rlhf/kitten.png", src)
    shutil.copy(DATA / "ms-swift-rlhf/puppy.png", src)
    (src / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = convert(src / "pairs.jsonl", tmp_path / "set")
    manifest = json.loads((tmp_path / "set/manifest.json").read_text())
    assert [p.id for p in read_pairs(out)] == ["same", "other"] and manifest["skipped_by_reason"] == {"duplicate_id": 1}
    assert manifest["skipped"] == [f"{src / 'pairs.jsonl'}:3: duplicate_id: the id of {src / 'pairs.jsonl'}:1 again"]
    with pytest.raises(RecordError, match=r"pairs.jsonl:3: duplicate_id: the id of .*pairs.jsonl:1 again"):
        convert(src / "pairs.jsonl", tmp_path / "set2", on_bad="error")


def test_training_records_refuse_or_skip_a_repeated_id_before_step_1(tmp_path):
    """Rows name their ids when mmpo wrote them (exports keep `id`); rows without one get an id from their place."""
    from mmpo.formats import read_source_records

    src = tmp_path / "src"
    shutil.copytree(DATA / "ms-swift-rlhf", src)
    row = json.loads((src / "dpo_multimodal.jsonl").read_text().splitlines()[0])
    (src / "pairs.jsonl").write_text(json.dumps({**row, "id": "a"}) + "\n" + json.dumps({**row, "id": "a"}) + "\n")
    with pytest.raises(RecordError, match=r"pairs.jsonl:2: duplicate_id: the id of .*pairs.jsonl:1 again"):
        read_source_records("swift", src / "pairs.jsonl", tmp_path / "run", "pair", "error")
    records, skipped = read_source_records("swift", src / "pairs.jsonl", tmp_path / "run", "pair", "skip")
    assert len(records) == 1 and len(skipped) == 1 and records[0].media == ("source/kitten.png",)
    assert (tmp_path / "run" / records[0].media[0]).read_bytes() == (DATA / "ms-swift-rlhf/kitten.png").read_bytes()


def test_a_wrong_format_that_converts_nothing_exits_1_naming_the_right_one(tmp_path, capsys):
    """`--from swift` on an RLAIF-V parquet: every row skipped -> exit 1, naming the format its columns fit."""
    from mmpo.app.cli import main

    assert main(["data", "convert", "--from", "swift", str(DATA / "rlaif-v-dataset"), "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert "no record converted" in err and "--from rlaif_v (or --from auto), not --from swift" in err


def test_a_bad_json_line_is_named_without_a_doubled_word(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b'{"id": "a' + bytes([1]) + b'"}' + b"\n")  # a raw control character: "Invalid control character at"
    with pytest.raises(RecordError) as err:
        read_pairs(path)
    assert "pairs.jsonl:1: invalid JSON (Invalid control character at column" in str(err.value)


def test_a_model_card_says_a_converted_set_came_from_data_convert(tmp_path):
    from mmpo.model_card import _data_lines, data_facts

    out = convert(DATA / "rlaif-v-dataset", tmp_path / "c", "auto")
    lines = _data_lines(data_facts(out, 2, 0), {})
    assert "`mmpo data convert` from `" in lines[1] and "(format `rlaif_v`)" in lines[1] and "`?`" not in lines[1]
