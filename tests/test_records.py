"""Pair and SFT records on read: unique ids, bytes, numbers, types, no-preference pairs, skips logged once,
the streaming reader (lazy, picklable, small, digest from the same pass), JSONL lines ending at "\n" only,
and media paths kept under their root."""

import json
import logging
import math
import multiprocessing
import pickle
import tracemalloc

import pytest
from helpers import toy_pairs, toy_sft

from mmpo.records import (
    MediaCheck,
    RecordError,
    SFTRecord,
    file_digest,
    jsonl_lines,
    read_pairs,
    read_sft,
    resolve_media,
    scan_records,
    write_jsonl,
)


@pytest.fixture()
def pairs(tmp_path):
    """A valid 6-pair file (media on disk) and its lines as dicts."""
    path = toy_pairs(tmp_path, n=6)
    return path, [json.loads(line) for line in path.read_text().splitlines()]


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# ----------------------------------------------------------------------------- unique ids (finding 3)

def test_a_repeated_pair_id_is_an_error_naming_both_lines(pairs):
    path, rows = pairs
    rows[4]["id"] = rows[1]["id"]  # other content, same id: the reference cache would mix them up
    _write(path, rows)
    with pytest.raises(RecordError, match=rf"{path.name}:5: field 'id': .* is already the id of .*{path.name}:2;"):
        read_pairs(path)
    with pytest.raises(RecordError, match=r":5: field 'id'"):
        scan_records(path, "pair", path.parent)


def test_a_repeated_pair_id_is_skipped_later_one_counted_and_logged_once(pairs, caplog):
    path, rows = pairs
    rows[4]["id"] = rows[1]["id"]
    _write(path, rows)
    with caplog.at_level(logging.WARNING):
        records, skipped = scan_records(path, "pair", path.parent, on_bad="skip")
    assert len(records) == 5 and len(skipped) == 1 and f"{path}:5:" in skipped[0]
    assert [r.id for r in records] == [r["id"] for i, r in enumerate(rows) if i != 4]
    assert records[1].chosen == rows[1]["chosen"]  # the first one is kept
    assert [m for m in caplog.messages if "skipping" in m] == [f"skipping {skipped[0]}"]


def test_sft_ids_may_repeat(tmp_path):
    path = toy_sft(tmp_path, n=3)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + lines[:1]) + "\n")  # the demo world asks some questions twice
    assert [r.id for r in read_sft(path)] == ["s0", "s1", "s2", "s0"]


# ----------------------------------------------------------------------------- bytes (finding 7)

def test_a_byte_order_mark_at_the_start_is_accepted(pairs, tmp_path):
    path, rows = pairs
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    records, _ = scan_records(path, "pair", path.parent)
    assert [r.id for r in records] == [r["id"] for r in rows]
    assert records[0].id == rows[0]["id"]  # line 1 re-read from its offset, past the mark
    sft = toy_sft(tmp_path / "sft", n=2)
    sft.write_bytes(b"\xef\xbb\xbf" + sft.read_bytes())
    assert [r.id for r in read_sft(sft)] == ["s0", "s1"]


def test_bytes_that_are_not_utf8_are_a_record_error_naming_file_and_line(pairs):
    path, rows = pairs
    raw = path.read_bytes().splitlines(keepends=True)
    raw[2] = raw[2].replace(b"what", b"wh\xe9t")  # latin-1, not UTF-8
    path.write_bytes(b"".join(raw))
    with pytest.raises(RecordError, match=rf"{path.name}:3: not UTF-8 \(byte 0xe9 at column \d+\)"):
        read_pairs(path)
    records, skipped = scan_records(path, "pair", path.parent, on_bad="skip")  # skip mode goes on reading
    assert len(records) == 5 and len(skipped) == 1 and ":3: not UTF-8" in skipped[0]


# ----------------------------------------------------------------------------- values and types (finding 7)

@pytest.mark.parametrize("key, value, field", [
    ("weight", float("nan"), "weight"),
    ("weight", float("inf"), "weight"),
    ("weight", -1.0, "weight"),
    ("weight", "2", "weight"),
    ("weight", True, "weight"),
    pytest.param("weight", 10 ** 400, "weight", id="weight-int-too-big-for-a-float"),
    ("scores", {"delta": "big"}, "scores.delta"),
    ("scores", {"delta": float("nan")}, "scores.delta"),
    ("scores", {"delta": [0.5]}, "scores.delta"),
    ("scores", {"clip": None}, "scores.clip"),
    ("scores", {"clip_sim": [0.5, "x"]}, "scores.clip_sim"),
    ("scores", [1.0], "scores"),
    ("id", [1], "id"),
    ("id", 7, "id"),
    ("source", {"name": "x"}, "source"),
    ("meta", ["gt"], "meta"),
    ("schema_version", True, "schema_version"),
])
def test_bad_numbers_and_types_are_refused_on_read_naming_the_field(pairs, key, value, field):
    path, rows = pairs
    rows[3][key] = value
    _write(path, rows)  # json.dumps writes NaN / Infinity, which json.loads reads back
    with pytest.raises(RecordError, match=rf"{path.name}:4: field '{field}': (expected|unsupported)"):
        read_pairs(path)


def test_what_builders_write_into_scores_and_weight_stays_valid(pairs):
    path, rows = pairs
    rows[0]["scores"] = {"clip_sim": [0.91, 0.88], "clip_sim_dropped": []}  # augment
    rows[1]["scores"] = {"judge_chosen": 7.5, "judge_rejected": 3, "clip_chosen": 0.3, "clip_rejected": 0.2,
                         "delta": 0.1}  # self_qa
    rows[2]["scores"] = {"gen_chosen": -1.2, "gen_rejected": -2.5, "gen_z": 0.4, "fused": -0.3, "delta": -0.3}
    rows[2]["weight"] = 0  # difficulty / multi-round write weights; zero switches a pair off
    rows[3]["weight"] = None
    _write(path, rows)
    recs = read_pairs(path, path.parent)
    assert recs[0].scores["clip_sim"] == [0.91, 0.88] and recs[2].weight == 0.0 and recs[3].weight is None


def test_sft_ids_and_meta_are_checked_too(tmp_path):
    path = toy_sft(tmp_path, n=2)
    row = json.loads(path.read_text().splitlines()[1])
    for key, value in (("id", ["s1"]), ("meta", "gt")):
        _write(path, [{**row, key: value}])
        with pytest.raises(RecordError, match=rf"{path.name}:1: field '{key}': expected"):
            read_sft(path)


def test_a_pair_that_prefers_nothing_is_refused_but_conditional_media_pairs_are_kept(pairs):
    path, rows = pairs
    same = {**rows[0], "rejected": rows[0]["chosen"]}
    for bad in (same, {**same, "rejected_media": same["media"]}):
        _write(path, [bad])
        with pytest.raises(RecordError, match=r":1: field 'rejected': equals 'chosen' on the same media"):
            read_pairs(path)
    other = rows[1]["media"]
    bag = [{"op": "mdpo_crop", "params": {}, "seed": 3}]
    _write(path, [{**same, "rejected_media": other}, {**same, "id": "b", "rejected_bag": bag}])
    assert [r.rejected for r in read_pairs(path, path.parent)] == [same["chosen"]] * 2


def test_the_cached_media_check_keeps_the_rule_of_resolve_media(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "img" / "sub").mkdir(parents=True)
    outside.mkdir()
    for path in (root / "img" / "a.png", outside / "b.png"):
        path.write_bytes(b"x")
    (root / "img" / "in.png").symlink_to(root / "img" / "a.png")
    (root / "img" / "out.png").symlink_to(outside / "b.png")
    (root / "linked").symlink_to(outside)
    check = MediaCheck(root)
    rels = ["img/a.png", "img/in.png", "img/out.png", "linked/b.png", "../outside/b.png", str(outside / "b.png"),
            "img/sub", "img/nope.png", "img/sub/../a.png", "img/.."]
    for _ in range(2):  # the second round answers from the cache
        for rel in rels:
            try:  # the rule, uncached: stay under the root as written, be a file (links followed to stat)
                ok, why = resolve_media(root, rel).is_file(), "missing media file"
            except ValueError:
                ok, why = False, "escapes the media root"
            got = check.problem(rel)
            assert (got == "") if ok else (why in got), (rel, got)
    assert [rel for rel in rels if not check.problem(rel)] == ["img/a.png", "img/in.png", "img/out.png", "linked/b.png",
                                                                "img/sub/../a.png"]


# ----------------------------------------------------------------------------- skips logged once (finding 8)

def test_every_skipped_line_is_counted_and_logged_once_with_its_reason(pairs, caplog):
    path, rows = pairs
    rows[1]["media"] = ["img/missing.png"]
    rows[2]["media"] = ["img/missing.png"]  # the same missing file again: its line is still named
    rows[3]["weight"] = float("nan")
    _write(path, rows[:5] + ["{not json"])
    with caplog.at_level(logging.WARNING):
        records, skipped = scan_records(path, "pair", path.parent, on_bad="skip")
    assert len(records) == 2 and len(skipped) == 4
    assert [s.split(": ", 1)[0] for s in skipped] == [f"{path}:{n}" for n in (2, 3, 4, 6)]
    assert "missing media file" in skipped[1] and "field 'weight'" in skipped[2] and "invalid JSON" in skipped[3]
    assert sorted(m for m in caplog.messages if "skipping" in m) == sorted(f"skipping {s}" for s in skipped)


# ----------------------------------------------------------------------------- the streaming reader (finding 9)

def test_the_reader_is_a_lazy_sequence_equal_to_the_eager_list(pairs):
    path, _ = pairs
    eager = read_pairs(path)
    records, _ = scan_records(path, "pair", path.parent)
    assert len(records) == len(eager) == 6
    assert list(records) == eager and records[-1] == eager[-1] and records[2:4] == eager[2:4]
    with pytest.raises(IndexError):
        records[6]
    copy = pickle.loads(pickle.dumps(records))  # what a spawned DataLoader worker gets
    assert [copy[i] for i in (5, 0, 3)] == [eager[i] for i in (5, 0, 3)]


def _read_in_child(records, indices, out):
    out.put([records[i].id for i in indices])


def test_a_forked_process_reads_through_its_own_file(pairs):
    path, _ = pairs
    records, _ = scan_records(path, "pair")
    expected = [r.id for r in records]  # the parent's file is open at its end now
    queue = multiprocessing.get_context("fork").Queue()
    child = multiprocessing.get_context("fork").Process(target=_read_in_child, args=(records, [4, 1, 5], queue))
    child.start()
    got = queue.get(timeout=60)
    child.join()
    assert got == [expected[i] for i in (4, 1, 5)]
    assert records[2].id == expected[2]


def test_the_digest_comes_with_the_read_and_equals_the_file_sha256(pairs):
    path, _ = pairs
    records, _ = scan_records(path, "pair")
    assert records.digest == file_digest(path)


def test_a_file_changed_after_validation_is_an_error_not_a_mix(pairs):
    path, rows = pairs
    records, _ = scan_records(path, "pair")
    _write(path, rows[::-1])
    with pytest.raises(RecordError, match="changed after it was validated"):
        records[0]


def test_the_reader_keeps_far_less_than_the_records(tmp_path):
    path = toy_pairs(tmp_path, n=4)
    row = json.loads(path.read_text().splitlines()[0])
    n = 20_000
    _write(path, [{**row, "id": f"p{i}", "prompt": f"what color is square {i} ?"} for i in range(n)])
    tracemalloc.start()
    try:
        records, _ = scan_records(path, "pair", path.parent)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(records) == n and records[n - 1].id == f"p{n - 1}"
    # offsets and line numbers: 16 bytes a record (+ array slack); the records themselves are ~1 kB each
    assert held / n < 64, f"{held / n:.0f} bytes held per record"
    assert math.isfinite(held)


# ----------------------------------------------------------------------------- lines and media roots

# Characters str.splitlines() treats as line ends but JSON keeps raw inside strings (ensure_ascii=False).
ODD = "a\u2028b\u0085c\u2029d"


def test_jsonl_lines_split_on_newline_only():
    assert jsonl_lines('{"x": "' + ODD + '"}\n{"y": 1}\n') == ['{"x": "' + ODD + '"}', '{"y": 1}']
    assert len(('{"x": "' + ODD + '"}').splitlines()) == 4  # what went wrong before
    assert jsonl_lines("a\n\nb") == ["a", "", "b"] and jsonl_lines("") == [] and jsonl_lines("a\r\n") == ["a\r"]


def test_records_with_unicode_line_separators_and_a_lone_cr(tmp_path):
    rec = SFTRecord(id="s0", media=("a.png",), media_type="image", prompt="what is" + ODD, answer="a cat" + ODD)
    path = tmp_path / "sft.jsonl"
    write_jsonl(path, [rec, rec])
    assert ODD in path.read_text(encoding="utf-8")  # written raw, not escaped
    assert read_sft(path) == [rec, rec]
    # "\r" is JSON whitespace between tokens; universal-newline reading would cut this line in two.
    path.write_text('{"a":\r1}\n{"a": 2}\r\n', encoding="utf-8", newline="")
    assert [json.loads(x) for x in jsonl_lines(path.read_bytes().decode())] == [{"a": 1}, {"a": 2}]
    assert json.loads('{"a":\r1}') == {"a": 1}


def test_media_paths_stay_under_the_root_but_links_inside_it_may_point_anywhere(tmp_path):
    from mmpo.records import resolve_media

    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / "abc").write_bytes(b"x")
    root = tmp_path / "snapshots" / "main"
    root.mkdir(parents=True)
    (root / "img.png").symlink_to(tmp_path / "blobs" / "abc")  # the Hugging Face cache layout
    assert resolve_media(root, "img.png") == root / "img.png"
    assert resolve_media(root, "sub/../img.png") == root / "img.png"
    for rel in ("../../blobs/abc", "sub/../../main2/x.png", str(tmp_path / "blobs" / "abc")):
        with pytest.raises(ValueError, match="escapes the media root"):
            resolve_media(root, rel)
