"""Run a video model on VideoHallucer: ask each pair's basic and hallucinated question on its own video, save
resumable predictions, score per category, report.

How each question is answered (generate / logits, prefix reuse): `mmpo/eval/answering.py`; the opening every run
shares (run.json, resuming, answering what predictions.jsonl lacks): `mmpo/eval/runs.py`.

Outputs under `out_dir`: predictions.jsonl, run.json, metrics.json, report.md and plots (mmpo/eval/report.py), plus
the reference layout results/<category>.json. With `on_bad_media: skip` the pairs on unreadable videos are left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mmpo.config import ModelConfig
from mmpo.eval import report, videohallucer, videohallucer_metrics
from mmpo.eval.answering import MODES, Item
from mmpo.eval.predictions import BAD_MEDIA, skipped_summary
from mmpo.eval.runs import answer_questions, media_path
from mmpo.schema import check_choice

KEY = ("category", "pair", "side")  # the fields of a predictions.jsonl row's key


@dataclass
class VideoHallucerEvalConfig:
    model: ModelConfig = field(default_factory=ModelConfig)  # model; frames per video = model.num_frames
    data_dir: str = ""  # videohallucer_datasets/ (reference layout: <category>/<category>.json + videos/)
    files: list[str] = field(default_factory=list)  # or: category files (used instead of data_dir)
    video_root: str = ""  # "" = the `videos/` folder next to each category file; else one flat folder
    categories: list[str] = field(default_factory=lambda: list(videohallucer.CATEGORIES))  # with data_dir
    out_dir: str = "runs/eval/videohallucer"  # predictions.jsonl, results/, metrics.json, report.md
    mode: str = "generate"  # generate | logits
    batch_size: int = 4  # questions per forward / generate call
    max_new_tokens: int = 16  # generate mode: answer length cap
    prefix_reuse: bool = True  # logits mode: encode each video + template prefix once
    limit: int = 0  # first N pairs per category (0 = all)
    on_bad_media: str = "error"  # error | skip: leave out pairs with an unreadable video (named in metrics.json)
    report_to: list[str] = field(default_factory=list)  # trackers that get the metrics: tensorboard | wandb | mlflow ...

    def __post_init__(self):
        check_choice(self, mode=MODES, on_bad_media=BAD_MEDIA)


def vh_category_files(cfg: VideoHallucerEvalConfig) -> list[Path]:
    """Category files: `files`, else `<data_dir>/<category>/<category>.json` for each configured category."""
    if cfg.files:
        return [Path(f) for f in cfg.files]
    if not cfg.data_dir:
        raise ValueError("set data_dir (reference layout) or files (category JSON files)")
    files = [Path(cfg.data_dir) / c / f"{c}.json" for c in cfg.categories]
    missing = [f for f in files if not f.is_file()]
    if missing:
        found = sorted(p.parent.name for p in Path(cfg.data_dir).glob("*/*.json") if p.stem == p.parent.name)
        raise FileNotFoundError(f"{missing[0]}: no such file; `categories` lists the categories to run "
                                f"({len(missing)} of {len(files)} missing; {cfg.data_dir} holds {found or 'none'}: "
                                f"e.g. categories=[{','.join(found)}])")
    return files


def _vh_video(cfg: VideoHallucerEvalConfig, data_file: Path, video: str, where: str) -> str:
    """`video` under `video_root` (or the category's own videos/ folder); a name leaving it is an error at `where`."""
    return media_path(cfg.video_root or data_file.parent / "videos", video, where)


def _vh_category(cfg: VideoHallucerEvalConfig, cat: str, f: Path, pairs: list, done: dict, bad: dict,
                 out: Path) -> dict:
    """Score one category from {(category, pair, side): (answer, margin)} and write its reference results file.

    Skip mode: only pairs answered on both sides count (a pair is the unit of every score); the left-out pairs
    and this category's unreadable files go under "skipped_media".
    """
    keep = [i for i in range(len(pairs)) if all((cat, str(i), side) in done for side in ("basic", "hallucination"))]
    if not keep:
        raise ValueError(f"{f}: no pair has two readable videos (e.g. {sorted(bad)[:2]})")
    kept = [pairs[i] for i in keep]
    preds = [videohallucer.VHPrediction(done[(cat, str(i), "basic")][0], done[(cat, str(i), "hallucination")][0])
             for i in keep]
    videohallucer.write_results(out / "results" / f"{cat}.json", kept, preds)  # the reference layout
    res = videohallucer_metrics.score_category(kept, preds)
    if all((p.basic.answer, p.hallucination.answer) == ("yes", "no") for p in pairs):
        res["bias"] = videohallucer_metrics.bias_scores(kept, preds)
    res = {**res, "mode": cfg.mode, "data_file": f.name}
    if cfg.on_bad_media == "skip":
        videos = {_vh_video(cfg, f, getattr(p, side).video, str(f)) for p in pairs
                  for side in ("basic", "hallucination")}
        res["skipped_media"] = skipped_summary({v: e for v, e in bad.items() if v in videos}, len(pairs) - len(kept),
                                               "pairs")
    return res


def run_videohallucer(cfg: VideoHallucerEvalConfig, model=None, processor=None) -> dict:
    """Evaluate a video model on VideoHallucer (each question asked on its own video with PROMPT_SUFFIX).

    Arguments as every runner's (`mmpo/eval/runs.py`); returns the metrics written to metrics.json: {category:
    score_category(+bias)} plus "overall" (mean over the published categories present).
    """
    out = Path(cfg.out_dir)
    data = {}
    for f in vh_category_files(cfg):
        pairs = videohallucer.read_pairs(f)
        cat = (pairs[0].category if pairs else "") or f.stem  # a file named for no category: its own name
        if cat in data:  # one results entry per category: a second file would replace the first unscored
            raise ValueError(f"{f}: category {cat!r} was read from {data[cat][0]} already: give each category one file")
        data[cat] = (f, pairs[:cfg.limit] if cfg.limit else pairs)
    items = [Item((cat, str(i), side), _vh_video(cfg, f, getattr(p, side).video, f"{f}: pair {i} {side}"),
                  getattr(p, side).prompt())
             for cat, (f, pairs) in data.items() for i, p in enumerate(pairs) for side in ("basic", "hallucination")]
    done, bad = answer_questions(cfg, {"mode": cfg.mode}, KEY, items, "video", model, processor,
                                 group_by_media=False)
    results = {cat: _vh_category(cfg, cat, f, pairs, done, bad, out) for cat, (f, pairs) in data.items()}
    if any(c in results for c in videohallucer.CATEGORIES):
        results["overall"] = videohallucer_metrics.overall(results)
    report.write_videohallucer_report(out, results)
    return results
