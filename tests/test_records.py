"""mmpo.records file reading: JSONL lines end at "\n" only, whatever the strings hold."""

import json

import pytest

from mmpo.records import SFTRecord, iter_jsonl, jsonl_lines, read_sft, write_jsonl

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
    assert [(w.rsplit(":", 1)[1], o) for w, o in iter_jsonl(path)] == [("1", {"a": 1}), ("2", {"a": 2})]
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
