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
`gt_objects` is read as that. Text rules: `mmpo/eval/chair_words.py`. Pure Python (no torch).

Vocabulary: "coco" (default) is the reference's COCO object and synonym lists; "categories" is the COCO instances
file's own category names, each its own class (`chair_words.category_words`), so a COCO-format dataset of other
objects (mmpo's demo shapes) is scored against exact ground truth. A ground-truth JSONL has no category list.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mmpo.eval import files
from mmpo.eval.chair_words import CocoWords, Lemmatizer, caption_objects, category_words, coco_words, normalise_class

PROMPT = "Please describe this image in detail."  # lmms-eval coco_cap_chair_doc_to_text
VOCABULARIES = ("coco", "categories")


@dataclass(frozen=True)
class ChairImage:
    """One image to caption: COCO id, file name (relative to the image root), ground-truth classes."""

    image_id: int
    file_name: str
    gt_objects: frozenset


def _check_coco(data: dict, path: str | Path) -> None:
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise ValueError(f"{path}: field '{key}': missing (expected COCO instances JSON)")
        if not isinstance(data[key], list):
            raise ValueError(f"{path}: field '{key}': expected a JSON array, got a JSON {files.json_type(data[key])}")


def load_vocabulary(name: str, annotations: str | Path, parsed=None) -> CocoWords:
    """The object vocabulary `name` ("coco" or "categories", see the module docstring) for `annotations`.

    Args:
        name: "coco" or "categories".
        annotations: the ground-truth file.
        parsed: its `files.load_annotations` result, when already read (a 160 MB file is parsed once).
    """
    if name not in VOCABULARIES:
        raise ValueError(f"vocabulary must be one of {VOCABULARIES}, got {name!r}")
    if name == "coco":
        return coco_words()
    data = files.load_annotations(annotations) if parsed is None else parsed
    if not isinstance(data, dict) or "categories" not in data:
        raise ValueError(f"{annotations}: vocabulary 'categories' needs a COCO instances JSON with 'categories'; a "
                         "ground-truth JSONL has no category list (use vocabulary 'coco')")
    _check_coco(data, annotations)
    names = [files.need_str(files.need_object(c, f"{annotations}: categories[{i}]").get("name"),
                            f"{annotations}: categories[{i}]: field 'name'") for i, c in enumerate(data["categories"])]
    return category_words(names)


def images_from_coco(instances: str | Path, captions: str | Path | None = None,
                     lemmatizer: Lemmatizer | None = None, vocabulary: CocoWords | None = None,
                     parsed: dict | None = None) -> list[ChairImage]:
    """Ground truth from COCO annotation files (the original `get_annotations`).

    Args:
        instances: COCO instances JSON (`images`, `annotations`, `categories`, in any order).
        captions: optional COCO captions JSON: classes its captions mention are added (as the original does).
        lemmatizer: text backend for the captions (default "auto").
        vocabulary: object vocabulary (default: the COCO lists, whose synonyms map category names to classes;
            a `category_words` vocabulary keeps each category name as its own class).
        parsed: `instances` already parsed (else it is read).

    Returns:
        one ChairImage per entry of `images`, in file order.
    """
    data = files.load_json(instances) if parsed is None else parsed
    if not isinstance(data, dict):
        raise ValueError(f"{instances}:1: expected a COCO instances JSON object, got a JSON {files.json_type(data)}")
    _check_coco(data, instances)
    names = {}
    for i, c in enumerate(data["categories"]):
        where = f"{instances}: categories[{i}]"
        c = files.need_object(c, where)
        names[files.need_int_id(c.get("id"), f"{where}: field 'id'")] = normalise_class(
            files.need_str(c.get("name"), f"{where}: field 'name'"), vocabulary)
    gt: dict[int, set] = {}
    order = []
    for i, img in enumerate(data["images"]):
        where = f"{instances}: images[{i}]"
        img = files.need_object(img, where)
        image_id = files.need_int_id(img.get("id"), f"{where}: field 'id'")
        order.append((image_id, files.need_str(img.get("file_name"), f"{where}: field 'file_name'")))
        gt[image_id] = set()
    for i, ann in enumerate(data["annotations"]):
        where = f"{instances}: annotations[{i}]"
        ann = files.need_object(ann, where)
        image_id = files.need_int_id(ann.get("image_id"), f"{where}: field 'image_id'")
        category = files.need_int_id(ann.get("category_id"), f"{where}: field 'category_id'")
        if category not in names:
            raise ValueError(f"{where}: field 'category_id': {category} is not among the file's categories "
                             f"(ids {sorted(names)[:5]}{'...' if len(names) > 5 else ''})")
        if image_id in gt:
            gt[image_id].add(names[category])
    if captions is not None:
        lemmatizer = lemmatizer or Lemmatizer()
        caps = files.load_json(captions)
        if not isinstance(caps, dict) or not isinstance(caps.get("annotations"), list):
            raise ValueError(f"{captions}: field 'annotations': expected the COCO captions JSON's array")
        for i, ann in enumerate(caps["annotations"]):
            where = f"{captions}: annotations[{i}]"
            ann = files.need_object(ann, where)
            image_id = files.need_int_id(ann.get("image_id"), f"{where}: field 'image_id'")
            if image_id in gt:
                text = files.need_str(ann.get("caption"), f"{where}: field 'caption'")
                gt[image_id].update(caption_objects(text, lemmatizer, vocabulary)[1])
    return [ChairImage(image_id, name, frozenset(gt[image_id])) for image_id, name in order]


def images_from_jsonl(path: str | Path, rows: list[tuple[int, dict]] | None = None) -> list[ChairImage]:
    """Ground truth precomputed, one JSON per line: `image_id`, `gt_objects` (or lmms-eval's `gt_object`),
    optional `image` (file name; default COCO val2014's `COCO_val2014_%012d.jpg`)."""
    path = Path(path)
    out, seen = [], {}
    for n, rec in files.read_jsonl(path) if rows is None else rows:
        gt = rec.get("gt_objects", rec.get("gt_object"))
        if "image_id" not in rec or gt is None:
            raise ValueError(f"{path}:{n}: fields 'image_id' and 'gt_objects' are required")
        image_id = files.need_int_id(rec["image_id"], f"{path}:{n}: field 'image_id'")
        gt = files.need_str_list(gt, f"{path}:{n}: field 'gt_objects'")
        if image_id in seen:
            raise ValueError(f"{path}:{n}: image_id {image_id} appears twice (first at line {seen[image_id]})")
        seen[image_id] = n
        name = rec.get("image") or f"COCO_val2014_{image_id:012d}.jpg"
        out.append(ChairImage(image_id, files.need_str(name, f"{path}:{n}: field 'image'"), frozenset(gt)))
    return out


def read_images(path: str | Path, captions: str | Path | None = None, lemmatizer: Lemmatizer | None = None,
                vocabulary: CocoWords | None = None, parsed=None) -> list[ChairImage]:
    """COCO instances JSON (+ captions) or a ground-truth JSONL, by content; a JSONL's classes are COCO's."""
    data = files.load_annotations(path) if parsed is None else parsed
    if isinstance(data, dict):
        return images_from_coco(path, captions, lemmatizer, vocabulary, parsed=data)
    if vocabulary is not None and vocabulary.name != "coco":
        raise ValueError(f"{path}: a ground-truth JSONL holds COCO classes; vocabulary '{vocabulary.name}' needs "
                         "a COCO instances JSON")
    return images_from_jsonl(path, data)


def read_captions(path: str | Path) -> dict[int, str]:
    """Answers JSONL: `image_id` plus the caption under `caption`, `answer` or `text` (a string)."""
    path = Path(path)
    out = {}
    for n, rec in files.read_jsonl(path):
        key = next((k for k in ("caption", "answer", "text") if k in rec), None)
        if key is None or "image_id" not in rec:
            raise ValueError(f"{path}:{n}: fields 'image_id' and 'caption' (or 'answer'/'text') are required")
        image_id = files.need_int_id(rec["image_id"], f"{path}:{n}: field 'image_id'")
        if image_id in out:
            raise ValueError(f"{path}:{n}: image_id {rec['image_id']} answered twice")
        out[image_id] = files.need_str(rec[key], f"{path}:{n}: field '{key}'")
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
        "lemmatizer_backend": lemmatizer.backend, "lemmatizer_exact": lemmatizer.backend == "nltk",
        "vocabulary": vocabulary.name, "prompt": PROMPT,
        "captions": per,
    }


def score_answers_file(ground_truth: str | Path, answers: str | Path, captions: str | Path | None = None,
                       lemmatizer: str = "auto", vocabulary: str = "coco", answered: dict[int, str] | None = None
                       ) -> dict:
    """`mmpo eval chair --annotations GT --answers A`: score every image of GT that A answers.

    Args:
        ground_truth: COCO instances JSON or ground-truth JSONL (`read_images`).
        answers: captions JSONL (`read_captions`); images without an answer are left out (their count is kept).
        captions: COCO captions JSON (ground truth from reference captions too, as the original).
        lemmatizer: "auto" | "table" | "nltk" (`eval.chair_words.Lemmatizer`).
        vocabulary: "coco" | "categories" (`load_vocabulary`).
        answered: A already read ({image_id: caption}; another tool's layout, mmpo/eval/interop.py).
    """
    lem = Lemmatizer(lemmatizer)
    parsed = files.load_annotations(ground_truth)
    vocab = load_vocabulary(vocabulary, ground_truth, parsed)
    images = read_images(ground_truth, captions, lem, vocab, parsed)
    answered = read_captions(answers) if answered is None else answered
    unknown = sorted(set(answered) - {im.image_id for im in images})
    if unknown:
        raise ValueError(f"{answers}: image ids not in {ground_truth}: {unknown[:5]}")
    used = [im for im in images if im.image_id in answered]
    return {**score(used, answered, lem, vocab), "n_images_unanswered": len(images) - len(used),
            "ground_truth_file": Path(ground_truth).name}
