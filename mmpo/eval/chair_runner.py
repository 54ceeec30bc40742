"""Run a model on CHAIR: caption every image with the benchmark's prompt, score the captions, report.

Protocol of lmms-eval `tasks/coco_cap_chair` (`coco_cap_chair.yaml`, `utils.py`): each image is asked "Please
describe this image in detail." once, greedy (its `max_new_tokens` is 2048), and the caption's COCO objects
are checked against the image's ground truth (`mmpo/eval/chair.py`). Captions are generated, so there is no logits
mode. Resumable as the other runners are (`mmpo/eval/predictions.py`); outputs under `out_dir`: predictions.jsonl,
run.json, answers.jsonl (`image_id`, `caption`: what `mmpo eval chair --answers` scores), metrics.json (with
the per-caption details), report.md and chair.png. With `on_bad_media: skip` unreadable images are left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from mmpo.config import ModelConfig
from mmpo.eval import chair, files, report
from mmpo.eval.answering import Item
from mmpo.eval.chair_words import CocoWords, Lemmatizer
from mmpo.eval.predictions import BAD_MEDIA, write_rows
from mmpo.eval.runs import answer_questions, answered, finish, media_path
from mmpo.schema import check_choice

KEY = ("image_id",)  # the field of a predictions.jsonl row's key


@dataclass
class ChairEvalConfig:
    model: ModelConfig = field(default_factory=ModelConfig)  # model (+ adapter) to evaluate
    annotations: str = ""  # COCO instances_val2014.json, or a ground-truth JSONL (image_id, gt_objects[, image])
    captions: str = ""  # optional COCO captions_val2014.json: classes its captions name join the ground truth
    image_root: str = ""  # folder holding the images (COCO val2014); file names come from `annotations`
    out_dir: str = "runs/eval/chair"  # predictions.jsonl, answers.jsonl, metrics.json, report.md, chair.png
    prompt: str = chair.PROMPT  # lmms-eval coco_cap_chair's prompt
    batch_size: int = 8  # images per generate call
    max_new_tokens: int = 2048  # caption length cap, lmms-eval's (a shorter cap cuts captions: fewer objects named)
    lemmatizer: str = "auto"  # auto | table | nltk (eval.chair_words.Lemmatizer)
    # coco: the reference's COCO object + synonym lists | categories: the annotation file's own category names,
    # each its own class (a COCO instances JSON of other objects, e.g. the demo's shapes; not a ground-truth JSONL)
    vocabulary: str = "coco"
    limit: int = 0  # first N images of `annotations` (0 = all; a ground-truth JSONL picks a subset such as 500)
    on_bad_media: str = "error"  # error | skip: leave out unreadable images (named in metrics.json)
    report_to: list[str] = field(default_factory=list)  # trackers that get the metrics: tensorboard | wandb | mlflow ...
    mode: ClassVar[str] = "generate"  # captions are generated (no logits mode); read by eval.predictions.answer
    prefix_reuse: ClassVar[bool] = False

    def __post_init__(self):
        check_choice(self, lemmatizer=("auto", "table", "nltk"), vocabulary=chair.VOCABULARIES, on_bad_media=BAD_MEDIA)


def load_images(cfg: ChairEvalConfig, lemmatizer: Lemmatizer, vocabulary: CocoWords | None = None,
                parsed=None) -> dict[tuple, tuple[chair.ChairImage, str]]:
    """{(image id,): (ground truth, image path)} with `cfg.limit` applied; file names may not leave image_root.

    `parsed`: `files.load_annotations(cfg.annotations)` when already read (COCO's file is parsed once)."""
    images = chair.read_images(cfg.annotations, cfg.captions or None, lemmatizer, vocabulary, parsed)
    images = images[:cfg.limit] if cfg.limit else images
    return {(str(im.image_id),): (im, media_path(cfg.image_root, im.file_name, f"{cfg.annotations}: image {im.image_id}"))
            for im in images}


def run_chair(cfg: ChairEvalConfig, model=None, processor=None) -> dict:
    """Caption every image and score CHAIR_i, CHAIR_s and recall; resumable (see module docstring).

    Arguments as every runner's (`mmpo/eval/runs.py`); returns the metrics written to metrics.json: `chair.score`'s
    result, plus mode, prompt and skipped media.
    """
    out = Path(cfg.out_dir)
    lemmatizer = Lemmatizer(cfg.lemmatizer)
    for key, hint in (("annotations", ""), ("captions", " (captions= leaves the reference captions out)")):
        path = getattr(cfg, key)
        if (key == "annotations" or path) and not Path(path).is_file():
            raise FileNotFoundError(f"{key}: no such file {path!r}{hint}")
    parsed = files.load_annotations(cfg.annotations)  # before any captioning: a bad file fails fast
    vocabulary = chair.load_vocabulary(cfg.vocabulary, cfg.annotations, parsed)
    images = load_images(cfg, lemmatizer, vocabulary, parsed)
    items = [Item(k, path, cfg.prompt) for k, (_, path) in images.items()]
    done, bad = answer_questions(cfg, {"prompt": cfg.prompt}, KEY, items, "image", model, processor,
                                 group_by_media=False)
    captioned = answered(images, done, bad, cfg.annotations, "no image could be read")
    captions = {im.image_id: done[(str(im.image_id),)][0] for im in captioned}
    write_rows(out / "answers.jsonl", [{"image_id": i, "caption": c} for i, c in captions.items()])
    metrics = {**chair.score(captioned, captions, lemmatizer, vocabulary), "mode": cfg.mode, "prompt": cfg.prompt,
               "ground_truth_file": Path(cfg.annotations).name}
    return finish(cfg, metrics, bad, len(images) - len(captioned), "images", report.write_chair_report)
