"""POPE question builder, checked item by item against AoiDragon/POPE utils.py::pope (docs/BENCHMARKS.md §1.2)."""

import json
import random
from collections import defaultdict
from pathlib import Path

import pytest
from helpers import SAMPLES  # noqa: E402

from mmpo.eval.pope import read_questions
from mmpo.eval.pope_build import build, build_files, build_split, load_ground_truth, question_text

CATS = ["person", "car", "dog", "umbrella", "apple", "bench", "kite", "oven"]
# Objects per image in annotation order; a.jpg repeats "person" (deduplicated), f.jpg has one object (skipped).
IMAGES = {"a.jpg": ["person", "car", "person", "dog"], "b.jpg": ["person", "umbrella", "bench"],
          "c.jpg": ["car", "person", "apple", "kite"], "d.jpg": ["dog", "umbrella", "oven"],
          "e.jpg": ["kite", "bench", "car"], "f.jpg": ["apple"]}
OBJECTS = {"a.jpg": ["person", "car", "dog"], "b.jpg": ["person", "umbrella", "bench"],
           "c.jpg": ["car", "person", "apple", "kite"], "d.jpg": ["dog", "umbrella", "oven"],
           "e.jpg": ["kite", "bench", "car"]}
# Over the 5 chosen images: person 3, car 3, dog/umbrella/bench/kite 2, apple/oven 1.
# Popular order with ties by name: car, person, bench, dog, kite, umbrella, apple, oven.
POPULAR = {"a.jpg": [("person", "bench"), ("car", "kite"), ("dog", "umbrella")],
           "b.jpg": [("person", "car"), ("umbrella", "dog"), ("bench", "kite")],
           "c.jpg": [("car", "bench"), ("person", "dog"), ("apple", "umbrella")],
           "d.jpg": [("dog", "car"), ("umbrella", "person"), ("oven", "bench")],
           "e.jpg": [("kite", "person"), ("bench", "dog"), ("car", "umbrella")]}


def _coco(tmp_path) -> Path:
    cat_id = {c: i + 1 for i, c in enumerate(CATS)}
    images = [{"id": 10 + i, "file_name": name} for i, name in enumerate(IMAGES)]
    img_id = {im["file_name"]: im["id"] for im in images}
    # Interleave the images' annotations: the per-image order must survive.
    anns, k = [], 0
    for depth in range(4):
        for name, objs in IMAGES.items():
            if depth < len(objs):
                k += 1
                anns.append({"id": k, "image_id": img_id[name], "category_id": cat_id[objs[depth]]})
    coco = {"images": images, "annotations": anns, "categories": [{"id": v, "name": c} for c, v in cat_id.items()]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(coco))
    return path


def _by_image(questions):
    out = defaultdict(list)
    for q in questions:
        out[q.image].append(q)
    return out


def _obj(text):
    return text.removeprefix("Is there an ").removeprefix("Is there a ").removesuffix(" in the image?")


def test_load_coco_objects_in_annotation_order(tmp_path):
    gt = load_ground_truth(_coco(tmp_path))
    assert {g["image"]: g["objects"] for g in gt} == {**OBJECTS, "f.jpg": ["apple"]}


def test_every_split_follows_the_reference_rules(tmp_path):
    built = build(load_ground_truth(_coco(tmp_path)), img_num=5, seed=3)
    co = defaultdict(lambda: defaultdict(int))  # co-occurrence over the 5 chosen images
    for objs in OBJECTS.values():
        for o in objs:
            for other in objs:
                if other != o:
                    co[o][other] += 1
    for split, questions in built.items():
        assert [q.question_id for q in questions] == list(range(1, 31))
        assert [q.label for q in questions] == ["yes", "no"] * 15 and {q.split for q in questions} == {split}
        groups = _by_image(questions)
        assert set(groups) == set(OBJECTS)  # f.jpg (1 object) never chosen
        for image, qs in groups.items():
            objs = [_obj(q.text) for q in qs]
            assert objs[0::2] == OBJECTS[image][:3]  # positives: the first 3 objects, in order
            assert len(set(objs)) == 6  # no duplicate question per image
            for k, neg in enumerate(objs[1::2]):
                assert neg in CATS and neg not in OBJECTS[image]  # a known object absent from the image
                if split == "popular":
                    assert (objs[2 * k], neg) == POPULAR[image][k]
                if split == "adversarial":
                    # the first allowed object by co-occurrence with THIS positive (count desc, then name);
                    # none left (c.jpg apple, d.jpg oven): the random fallback, checked above.
                    pos, banned = objs[2 * k], set(OBJECTS[image]) | set(objs[:2 * k + 1])
                    ranked = sorted(co[pos].items(), key=lambda kv: (-kv[1], kv[0]))
                    expected = next((o for o, _ in ranked if o not in banned), None)
                    assert neg == expected or (expected is None and (image, k) in {("c.jpg", 2), ("d.jpg", 2)})
    adv = {image: [_obj(q.text) for q in qs] for image, qs in _by_image(built["adversarial"]).items()}
    # person co-occurs with car twice (in image) then apple/bench/dog/kite/umbrella once: apple.
    # car co-occurs with kite 2, person 2: kite. dog: car (in image), then oven.
    assert adv["a.jpg"] == ["person", "apple", "car", "kite", "dog", "oven"]
    # oven only co-occurs with dog and umbrella (both in d.jpg): fallback to a random allowed object.
    assert adv["d.jpg"][:5] == ["dog", "car", "umbrella", "bench", "oven"]
    assert adv["d.jpg"][5] in {"person", "apple", "kite"}
    texts = {q.text for q in built["adversarial"]}
    assert "Is there an apple in the image?" in texts and "Is there an oven in the image?" in texts


def test_random_split_is_seeded_and_drawn_from_chosen_objects(tmp_path):
    gt = load_ground_truth(_coco(tmp_path))
    a = build(gt, splits=("random",), img_num=5, seed=7)["random"]
    assert a == build(gt, splits=("random",), img_num=5, seed=7)["random"]
    for image, qs in _by_image(a).items():
        negs = [_obj(q.text) for q in qs][1::2]
        assert all(n in CATS and n not in OBJECTS[image] for n in negs)


def test_tie_break_first_seen_reproduces_reference_dict_order():
    images = [{"image": k, "objects": v} for k, v in OBJECTS.items()]
    # Insertion order person, car, dog, umbrella, bench, ...: the tie at 2 goes to dog, then umbrella.
    first = build_split(images, "popular", random.Random(0), tie_break="first_seen")
    name = build_split(images, "popular", random.Random(0), tie_break="name")
    assert [_obj(q.text) for q in first[:6]] == ["person", "umbrella", "car", "bench", "dog", "kite"]
    assert [_obj(q.text) for q in name[:6]] == ["person", "bench", "car", "kite", "dog", "umbrella"]


def test_a_an_and_legacy_typo():
    assert question_text("umbrella") == "Is there an umbrella in the image?"
    assert question_text("skis") == "Is there a skis in the image?"
    assert question_text("umbrella", legacy_typo=True) == "Is there an umbrella in the imange?"
    assert question_text("skis", legacy_typo=True) == "Is there a skis in the image?"
    # the typo matches the real legacy (e3e3926) file, the fix matches HEAD
    legacy = read_questions(SAMPLES / "pope_random_legacy2910_sample.jsonl")
    head = read_questions(SAMPLES / "pope_random_sample.jsonl")
    assert legacy[8].text == question_text("umbrella", legacy_typo=True)
    assert head[8].text == question_text("umbrella")


def test_build_files_from_ground_truth_jsonl(tmp_path):
    gt = tmp_path / "gt.jsonl"
    gt.write_text("".join(json.dumps({"image": k, "objects": v}) + "\n" for k, v in OBJECTS.items()))
    paths = build_files(gt, tmp_path / "out", dataset="toy", img_num=4, seed=1)
    assert sorted(p.name for p in paths.values()) == ["toy_pope_adversarial.json", "toy_pope_popular.json",
                                                      "toy_pope_random.json"]
    lines = paths["popular"].read_text().splitlines()
    assert len(lines) == 24 and set(json.loads(lines[0])) == {"question_id", "image", "text", "label"}
    back = read_questions(paths["popular"])
    assert back[0].question_id == 1 and back[0].split == "popular"
    with pytest.raises(ValueError, match=r"only 5 images have >= 3 objects.*--num-images 5"):
        build_files(gt, tmp_path / "out", img_num=6)


REFERENCE = dict(tie_break="first_seen", legacy_typo=True)


@pytest.mark.parametrize("flags,kwargs", [(["--reference"], REFERENCE),
                                          (["--tie-break", "first_seen", "--legacy-typo"], REFERENCE),
                                          (["--legacy-typo"], dict(legacy_typo=True)),
                                          ([], {})])
def test_cli_build_equals_api(tmp_path, flags, kwargs):
    from mmpo.eval.cli import main

    ann = _coco(tmp_path)
    args = ["--annotations", str(ann), "--num-images", "5", "--seed", "3"]
    assert main("pope-build", args + ["--out", str(tmp_path / "cli"), *flags]) == 0
    api = build(load_ground_truth(ann), img_num=5, seed=3, **kwargs)
    for split, questions in api.items():
        assert read_questions(tmp_path / "cli" / f"coco_pope_{split}.json") == questions
    if kwargs == REFERENCE:  # the options change the output: the typo, and popular's order of tied counts
        default = build(load_ground_truth(ann), img_num=5, seed=3)
        assert any("imange" in q.text for q in api["popular"])
        assert [q.text.replace("imange", "image") for q in api["popular"]] != [q.text for q in default["popular"]]
        with pytest.raises(SystemExit):
            main("pope-build", args + ["--out", str(tmp_path / "x"), "--reference", "--tie-break", "name"])
