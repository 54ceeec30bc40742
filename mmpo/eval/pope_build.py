"""Build POPE question files by the reference procedure (AoiDragon/POPE `main.py` + `utils.py::pope`).

Procedure (docs/BENCHMARKS.md §1.2), reproduced step by step:
1. keep images with at least `sample_num` objects; `rng.sample` `img_num` of them;
2. count object frequency and pairwise co-occurrence over the CHOSEN images only;
3. per image, for i < sample_num: the positive is `objects[i]` (annotation order), followed by one
   negative that is neither in the image nor already asked for this image (the history holds the
   positives and the negatives used so far):
   - random: `rng.choice` over every object type present in the chosen images, redrawn until allowed;
   - popular: objects by descending frequency, first allowed one;
   - adversarial: objects by descending co-occurrence with THIS positive, first allowed one;
   popular/adversarial fall back to the random rule when nothing qualifies;
4. question text from the template with the a/an rule.

Differences from the reference, all deliberate:
- Seeded: one `random.Random(seed)` drives image sampling and then the splits in the reference's order
  (random, popular, adversarial), like `main.py`'s single global RNG. The reference sets no seed, so its
  released files cannot be regenerated; they are the benchmark.
- Ties in frequency / co-occurrence: the reference sorts dicts by count with Python's stable sort, so
  ties follow dict insertion order (an accident of image order). We sort by count desc, then name
  (`tie_break="name"`); `tie_break="first_seen"` reproduces the reference's insertion-order behaviour.
- The a/an rule is correct ("an umbrella ... image"); `legacy_typo=True` reproduces the reference's
  `template.replace("a", "an")` bug ("Is there an umbrella in the imange?").
- Object lists are de-duplicated (first occurrence kept), so no question repeats within an image.
- An image with no possible negative raises instead of looping forever.

Checked once (scratch script, not committed): with `tie_break="first_seen", legacy_typo=True` the
output equals a line-by-line port of the reference `main.py`/`utils.py` seeded the same way, for 20
seeds x 3 splits on a random 60-image ground truth.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

from mmpo.eval import files
from mmpo.eval.pope import SPLITS, PopeQuestion

TEMPLATE = "Is there a {} in the image?"  # main.py --template default


def _dedupe(objects: list[str]) -> list[str]:
    return list(dict.fromkeys(objects))


def load_ground_truth(path: str | Path) -> list[dict]:
    """Objects per image from COCO instance annotations or a `{"image", "objects"}` JSONL file.

    COCO: images in `images` order, objects = category names of the image's annotations in annotation
    order, de-duplicated (first occurrence). JSONL: the reference `--seg_path` layout, de-duplicated.

    Args:
        path: `instances_*.json` (a dict with images/annotations/categories) or ground-truth JSONL.

    Returns:
        `[{"image": file_name, "objects": [name, ...]}, ...]`.
    """
    path = Path(path)
    data = files.load_annotations(path)  # CHAIR's rule: COCO instances, else JSONL
    if isinstance(data, dict):
        return _from_coco(data, path)
    out = []
    for n, rec in data:
        for key in ("image", "objects"):
            if key not in rec:
                raise ValueError(f"{path}:{n}: field '{key}': missing")
        out.append({"image": rec["image"], "objects": _dedupe(list(rec["objects"]))})
    return out


def _from_coco(coco: dict, path: Path) -> list[dict]:
    for key in ("images", "annotations", "categories"):
        if key not in coco:
            raise ValueError(f"{path}: field '{key}': missing (not COCO instance annotations)")
    names = {c["id"]: c["name"] for c in coco["categories"]}
    objects: dict[int, list[str]] = {im["id"]: [] for im in coco["images"]}
    for i, ann in enumerate(coco["annotations"]):
        if ann.get("image_id") not in objects or ann.get("category_id") not in names:
            raise ValueError(f"{path}: annotations[{i}]: unknown image_id or category_id")
        objects[ann["image_id"]].append(names[ann["category_id"]])
    return [{"image": im["file_name"], "objects": _dedupe(objects[im["id"]])} for im in coco["images"]]


def _ranked(counts: dict[str, int], tie_break: str) -> list[str]:
    if tie_break == "first_seen":  # stable sort over insertion order, as the reference's sorted(dict.items())
        return [k for k, _ in sorted(counts.items(), key=lambda kv: kv[1], reverse=True)]
    if tie_break == "name":
        return [k for k, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    raise ValueError(f"tie_break must be 'name' or 'first_seen', got {tie_break!r}")


def frequency(images: list[dict]) -> dict[str, int]:
    """`generate_ground_truth_objects`: images containing each object, in first-occurrence order."""
    return dict(Counter(o for im in images for o in im["objects"]))


def co_occurrence(images: list[dict]) -> dict[str, dict[str, int]]:
    """`compute_co_occurrence`: for each object, how many images it shares with each other object."""
    co: dict[str, dict[str, int]] = {}
    for im in images:
        for o in im["objects"]:
            row = co.setdefault(o, {})
            for other in im["objects"]:
                if other != o:
                    row[other] = row.get(other, 0) + 1
    return co


def question_text(obj: str, template: str = TEMPLATE, legacy_typo: bool = False) -> str:
    """Fill the template with the a/an rule of `utils.py::create_question` (vowel = a, e, i, o, u).

    Args:
        obj: object name.
        template: text with one "{}".
        legacy_typo: reproduce the reference bug `template.replace("a", "an")` ("imange").
    """
    if obj[:1] not in ("a", "e", "i", "o", "u"):
        return template.format(obj)
    if legacy_typo:
        return template.replace("a", "an").format(obj)
    return re.sub(r"\b([Aa]) \{\}", r"\1n {}", template).format(obj)


def _random_negative(rng: random.Random, pool: list[str], banned: set[str], image: str) -> str:
    if not any(o not in banned for o in pool):
        raise ValueError(
            f"image {image}: no object left to use as a negative: the {len(pool)} object types of the chosen images "
            f"are all in it or already asked about it ({len(banned)}); sample more images (--num-images) so more "
            "object types are present, ask fewer questions per image (--sample-num), or use annotations with more "
            "object types")
    while True:  # the reference's rejection loop: uniform over the allowed objects
        obj = rng.choice(pool)
        if obj not in banned:
            return obj


def build_split(images: list[dict], split: str, rng: random.Random, sample_num: int = 3,
                template: str = TEMPLATE, legacy_typo: bool = False, tie_break: str = "name") -> list[PopeQuestion]:
    """Questions for one split over already-chosen images (`utils.py::pope`).

    Args:
        images: the chosen images (`{"image", "objects"}`), each with >= sample_num objects.
        split: "random", "popular" or "adversarial".
        rng: the random source (random split, and fallbacks).
        sample_num: positives (= negatives) per image.
        template, legacy_typo: see `question_text`.
        tie_break: "name" or "first_seen" (see module docstring).

    Returns:
        2 * sample_num questions per image (pos1, neg1, pos2, neg2, ...), ids from 1.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    pool = list(frequency(images))
    popular = _ranked(frequency(images), tie_break)
    co = {o: _ranked(row, tie_break) for o, row in co_occurrence(images).items()}
    out: list[PopeQuestion] = []

    def add(image: str, obj: str, label: str) -> None:
        out.append(PopeQuestion(len(out) + 1, image, question_text(obj, template, legacy_typo), label, split))

    for im in images:
        history: list[str] = []
        for i in range(sample_num):
            pos = im["objects"][i]
            history.append(pos)
            add(im["image"], pos, "yes")
            banned = set(history) | set(im["objects"])
            ranked = [] if split == "random" else popular if split == "popular" else co.get(pos, [])
            neg = next((o for o in ranked if o not in banned), None)
            if neg is None:
                neg = _random_negative(rng, pool, banned, im["image"])
            history.append(neg)
            add(im["image"], neg, "no")
    return out


def build(ground_truth: list[dict], splits: tuple[str, ...] = SPLITS, sample_num: int = 3, img_num: int = 500,
          seed: int = 0, template: str = TEMPLATE, legacy_typo: bool = False,
          tie_break: str = "name") -> dict[str, list[PopeQuestion]]:
    """Choose images and build every split (`main.py::main`).

    Args:
        ground_truth: output of `load_ground_truth`.
        splits: splits to build, in the order their negatives consume the RNG.
        sample_num: positives per image (images with fewer objects are skipped).
        img_num: images to sample.
        seed: seed of the single `random.Random`.
        template, legacy_typo, tie_break: see `build_split`.

    Returns:
        {split: questions}.
    """
    for name, value in (("sample_num", sample_num), ("img_num", img_num)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            flag = "--sample-num" if name == "sample_num" else "--num-images"
            raise ValueError(f"{name} ({flag}) must be a whole number >= 1, got {value!r}: it would build no question")
    eligible = [im for im in ground_truth if len(im["objects"]) >= sample_num]
    if len(eligible) < img_num:
        raise ValueError(f"only {len(eligible)} images have >= {sample_num} objects; img_num={img_num} "
                         f"(ask for fewer: --num-images {len(eligible)}, or fewer objects per image: --sample-num)")
    rng = random.Random(seed)
    chosen = rng.sample(eligible, img_num)
    return {s: build_split(chosen, s, rng, sample_num, template, legacy_typo, tie_break) for s in splits}


def write_questions(path: str | Path, questions: list[PopeQuestion]) -> Path:
    """Write the official JSONL layout: one `{"question_id", "image", "text", "label"}` per line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for q in questions:
            f.write(json.dumps({"question_id": q.question_id, "image": q.image, "text": q.text,
                                "label": q.label}) + "\n")
    return path


def build_files(annotations: str | Path, out_dir: str | Path, dataset: str = "coco", **kwargs) -> dict[str, Path]:
    """Build and write `{dataset}_pope_{split}.json` (the reference's file names, JSONL content).

    Args:
        annotations: COCO instances JSON or ground-truth JSONL (see `load_ground_truth`).
        out_dir: output folder.
        dataset: file-name prefix.
        **kwargs: passed to `build` (sample_num, img_num, seed, template, legacy_typo, tie_break, splits).

    Returns:
        {split: written path}.
    """
    built = build(load_ground_truth(annotations), **kwargs)
    return {s: write_questions(Path(out_dir) / f"{dataset}_pope_{s}.json", qs) for s, qs in built.items()}
