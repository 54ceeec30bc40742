"""CHAIR (Rohrbach et al. 2018) on COCO captions: ground truth, answers files and the metrics.

Metrics exactly as lmms-eval `tasks/coco_cap_chair/utils.py` aggregates them (the original LisaAnne/Hallucination
`utils/chair.py` computes the same two ratios):
- CHAIR_i = hallucinated object mentions / all object mentions (each mention counts, repeats too);
- CHAIR_s = captions with at least one hallucinated mention / all captions;
- recall = sum over images of |ground-truth classes mentioned| / sum of |ground-truth classes|.
A mention is hallucinated when its COCO class is not among the image's ground-truth classes. lmms-eval reports
them x100; here they are fractions (like the original) and the report prints percentages.

Ground truth, as the original builds it (`get_annotations`): the classes of the image's COCO instance
annotations plus every class its reference captions mention (`caption_objects` on each). lmms-eval reads the
same sets precomputed (`gt_object` of the `tsunghanwu/mscoco_chair` dataset); a JSONL with `image_id` and
`gt_objects` is read as that. Text rules: `eval/chair_words.py`. Pure Python (no torch).

Vocabulary: "coco" (default) is the reference's COCO object and synonym lists; "categories" is the COCO instances
file's own category names, each its own class (`chair_words.category_words`), so a COCO-format dataset of other
objects (mmpo's demo shapes) is scored against exact ground truth. A ground-truth JSONL has no category list.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from eval.chair_words import CocoWords, Lemmatizer, caption_objects, category_words, coco_words, normalise_class
from mmpo.records import jsonl_lines

PROMPT = "Please describe this image in detail."  # lmms-eval coco_cap_chair_doc_to_text
VOCABULARIES = ("coco", "categories")


@dataclass(frozen=True)
class ChairImage:
    """One image to caption: COCO id, file name (relative to the image root), ground-truth classes."""

    image_id: int
    file_name: str
    gt_objects: frozenset


def _load_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None


def _is_coco(text: str) -> bool:
    """A COCO instances JSON (rather than a ground-truth JSONL), told by content."""
    text = text.lstrip()
    return text.startswith("{") and '"categories"' in text[:200000]


def load_vocabulary(name: str, annotations: str | Path) -> CocoWords:
    """The object vocabulary `name` ("coco" or "categories", see the module docstring) for `annotations`."""
    if name not in VOCABULARIES:
        raise ValueError(f"vocabulary must be one of {VOCABULARIES}, got {name!r}")
    if name == "coco":
        return coco_words()
    path = Path(annotations)
    if not _is_coco(path.read_text(encoding="utf-8")):
        raise ValueError(f"{path}: vocabulary 'categories' needs a COCO instances JSON with 'categories'; a "
                         "ground-truth JSONL has no category list (use vocabulary 'coco')")
    return category_words([c["name"] for c in _load_json(path)["categories"]])


def images_from_coco(instances: str | Path, captions: str | Path | None = None,
                     lemmatizer: Lemmatizer | None = None, vocabulary: CocoWords | None = None) -> list[ChairImage]:
    """Ground truth from COCO annotation files (the original `get_annotations`).

    Args:
        instances: COCO instances JSON (`images`, `annotations`, `categories`).
        captions: optional COCO captions JSON: classes its captions mention are added (as the original does).
        lemmatizer: text backend for the captions (default "auto").
        vocabulary: object vocabulary (default: the COCO lists, whose synonyms map category names to classes;
            a `category_words` vocabulary keeps each category name as its own class).

    Returns:
        one ChairImage per entry of `images`, in file order.
    """
    instances = Path(instances)
    data = _load_json(instances)
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise ValueError(f"{instances}: field '{key}': missing (expected COCO instances JSON)")
    names = {c["id"]: normalise_class(c["name"], vocabulary) for c in data["categories"]}
    gt: dict[int, set] = {img["id"]: set() for img in data["images"]}
    for ann in data["annotations"]:
        if ann["image_id"] in gt:
            gt[ann["image_id"]].add(names[ann["category_id"]])
    if captions is not None:
        lemmatizer = lemmatizer or Lemmatizer()
        for ann in _load_json(Path(captions))["annotations"]:
            if ann["image_id"] in gt:
                gt[ann["image_id"]].update(caption_objects(ann["caption"], lemmatizer, vocabulary)[1])
    return [ChairImage(img["id"], img["file_name"], frozenset(gt[img["id"]])) for img in data["images"]]


def images_from_jsonl(path: str | Path) -> list[ChairImage]:
    """Ground truth precomputed, one JSON per line: `image_id`, `gt_objects` (or lmms-eval's `gt_object`),
    optional `image` (file name; default COCO val2014's `COCO_val2014_%012d.jpg`)."""
    path = Path(path)
    out = []
    for n, line in enumerate(jsonl_lines(path.read_text(encoding="utf-8")), 1):
        if not line.strip():
            continue
        rec = json.loads(line)
        gt = rec.get("gt_objects", rec.get("gt_object"))
        if "image_id" not in rec or gt is None:
            raise ValueError(f"{path}:{n}: fields 'image_id' and 'gt_objects' are required")
        name = rec.get("image") or f"COCO_val2014_{int(rec['image_id']):012d}.jpg"
        out.append(ChairImage(int(rec["image_id"]), name, frozenset(gt)))
    return out


def read_images(path: str | Path, captions: str | Path | None = None, lemmatizer: Lemmatizer | None = None,
                vocabulary: CocoWords | None = None) -> list[ChairImage]:
    """COCO instances JSON (+ captions) or a ground-truth JSONL, by content; a JSONL's classes are COCO's."""
    if _is_coco(Path(path).read_text(encoding="utf-8")):
        return images_from_coco(path, captions, lemmatizer, vocabulary)
    if vocabulary is not None and vocabulary.name != "coco":
        raise ValueError(f"{path}: a ground-truth JSONL holds COCO classes; vocabulary '{vocabulary.name}' needs "
                         "a COCO instances JSON")
    return images_from_jsonl(path)


def read_captions(path: str | Path) -> dict[int, str]:
    """Answers JSONL: `image_id` plus the caption under `caption`, `answer` or `text`."""
    path = Path(path)
    out = {}
    for n, line in enumerate(jsonl_lines(path.read_text(encoding="utf-8")), 1):
        if not line.strip():
            continue
        rec = json.loads(line)
        key = next((k for k in ("caption", "answer", "text") if k in rec), None)
        if key is None or "image_id" not in rec:
            raise ValueError(f"{path}:{n}: fields 'image_id' and 'caption' (or 'answer'/'text') are required")
        if int(rec["image_id"]) in out:
            raise ValueError(f"{path}:{n}: image_id {rec['image_id']} answered twice")
        out[int(rec["image_id"])] = str(rec[key])
    return out


def score_caption(caption: str, gt_objects, lemmatizer: Lemmatizer, vocabulary: CocoWords | None = None) -> dict:
    """One caption: its mentions (word, class), the hallucinated ones, and the per-caption CHAIR values."""
    words, classes = caption_objects(caption, lemmatizer, vocabulary)
    hallucinated = [(w, c) for w, c in zip(words, classes) if c not in gt_objects]
    return {"mentioned": list(zip(words, classes)), "hallucinated": hallucinated,
            "chair_s": int(bool(hallucinated)),
            # the original's per-sentence CHAIR_i (0 when nothing is mentioned)
            "chair_i": len(hallucinated) / len(words) if words else 0.0,
            "recall_hits": len(set(gt_objects) & set(classes)), "n_gt": len(set(gt_objects))}


def score(images: list[ChairImage], captions: dict[int, str], lemmatizer: Lemmatizer | None = None,
          vocabulary: CocoWords | None = None) -> dict:
    """CHAIR_i, CHAIR_s and recall over `images` (each must have a caption).

    Args:
        images: ground truth, read with the same `vocabulary` (its classes are the vocabulary's).
        captions: {image id: caption}.
        lemmatizer: text backend (default "auto").
        vocabulary: object vocabulary (default: the COCO lists).

    Returns:
        chair_i, chair_s, recall (fractions), counts, per-caption details, the text backend and vocabulary used.
    """
    lemmatizer = lemmatizer or Lemmatizer()
    vocabulary = vocabulary or coco_words()
    missing = [im.image_id for im in images if im.image_id not in captions]
    if missing:
        raise ValueError(f"{len(missing)} images have no caption (first ids: {missing[:5]})")
    if not images:
        raise ValueError("no images to score")
    per = [{"image_id": im.image_id, **score_caption(captions[im.image_id], im.gt_objects, lemmatizer, vocabulary)}
           for im in images]
    mentions = sum(len(p["mentioned"]) for p in per)
    halluc = sum(len(p["hallucinated"]) for p in per)
    n_gt = sum(p["n_gt"] for p in per)
    return {
        # lmms-eval divides unguarded (ZeroDivisionError when no caption mentions an object); 0.0 here.
        "chair_i": halluc / mentions if mentions else 0.0,
        "chair_s": sum(p["chair_s"] for p in per) / len(per),
        "recall": sum(p["recall_hits"] for p in per) / n_gt if n_gt else 0.0,
        "n_captions": len(per), "n_mentions": mentions, "n_hallucinated": halluc,
        "mean_mentions": mentions / len(per), "lemmatizer": lemmatizer.describe(),
        "vocabulary": vocabulary.name, "prompt": PROMPT,
        "captions": per,
    }


def score_answers_file(ground_truth: str | Path, answers: str | Path, captions: str | Path | None = None,
                       lemmatizer: str = "auto", vocabulary: str = "coco") -> dict:
    """`mmpo eval chair --annotations GT --answers A`: score every image of GT that A answers.

    Args:
        ground_truth: COCO instances JSON or ground-truth JSONL (`read_images`).
        answers: captions JSONL (`read_captions`); images without an answer are left out (their count is kept).
        captions: COCO captions JSON (ground truth from reference captions too, as the original).
        lemmatizer: "auto" | "table" | "nltk" (`eval.chair_words.Lemmatizer`).
        vocabulary: "coco" | "categories" (`load_vocabulary`).
    """
    lem = Lemmatizer(lemmatizer)
    vocab = load_vocabulary(vocabulary, ground_truth)
    images = read_images(ground_truth, captions, lem, vocab)
    answered = read_captions(answers)
    unknown = sorted(set(answered) - {im.image_id for im in images})
    if unknown:
        raise ValueError(f"{answers}: image ids not in {ground_truth}: {unknown[:5]}")
    used = [im for im in images if im.image_id in answered]
    return {**score(used, answered, lem, vocab), "n_images_unanswered": len(images) - len(used),
            "ground_truth_file": Path(ground_truth).name}
