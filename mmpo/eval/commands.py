"""What each `mmpo eval NAME` has on its command line: its flags, how they score a finished file, the line a model
run prints, and (POPE, HallusionBench, CHAIR) the lmms-eval layout a finished run is also written in.

`EVALUATORS[NAME].command` holds one `Command`; `mmpo/eval/cli.py` builds every parser from it and adds what all
runnable benchmarks share (`--config F [key=value ...]`, `--out`, `--unanswered`), so no benchmark writes argparse
code of its own.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mmpo.eval import (
    amber,
    chair,
    eventhallusion,
    files,
    hallusionbench,
    interop,
    pope,
    pope_build,
    pope_metrics,
    videohallucer_metrics,
)
from mmpo.eval.chair_words import Lemmatizer
from mmpo.eval.pope_runner import load_pope_questions, pope_suffix


@dataclass(frozen=True)
class Flag:
    """One command-line flag: its name, help and any other `add_argument` keywords (choices, default, nargs ...)."""

    name: str
    help: str
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Command:
    """The command line of one `mmpo eval NAME` (see the module docstring).

    Attributes:
        usage: the synopsis `--help` shows.
        flags: the benchmark's own flags (those naming the files to score, and scoring options).
        act: (parsed flags, parser) -> the metrics of the named files (pope-build: builds files, returns None).
        needs: the flags scoring a file needs (without them, `--config` must be given).
        summary: (config, metrics) -> the lines a model run prints.
        unanswered: whether the scorer takes `--unanswered error | skip`.
        lmms: (config, metrics) -> the finished run in lmms-eval's layout (None when not written).
        printed: metrics -> what is printed (`--out` gets the whole metrics).
    """

    usage: str
    flags: tuple[Flag, ...]
    act: Callable[[argparse.Namespace, argparse.ArgumentParser], dict | None]
    needs: tuple[str, ...] = ()
    summary: Callable[[Any, dict], str] | None = None
    unanswered: bool = True
    lmms: Callable[[Any, dict], Path | None] | None = None
    printed: Callable[[dict], dict] = lambda metrics: metrics


def _lmms_settings(cfg) -> dict:
    """What lmms-eval's results file records of the run (`config`)."""
    return {"model_args": f"pretrained={cfg.model.path}" + (f",adapter={cfg.model.adapter}" if cfg.model.adapter
                                                            else ""),
            "mode": cfg.mode, "max_new_tokens": cfg.max_new_tokens, "batch_size": cfg.batch_size}


# ---------------------------------------------------------------- POPE


def _score_pope(a: argparse.Namespace, _) -> dict:
    if interop.detect(a.answers):  # lmms-eval samples / VLMEvalKit table (mmpo/eval/interop.py), detected by its fields
        return pope_metrics.score_samples_file(a.questions, a.answers, a.parser)
    return pope_metrics.score_answers_file(a.questions, a.answers, a.parser, unanswered=a.unanswered)


def _pope_summary(cfg, m: dict) -> str:
    # in %, as report.md prints them
    return (f"POPE ({cfg.mode}, parser {cfg.parser}): F1 {100 * m['f1']:.2f} accuracy {100 * m['accuracy']:.2f} "
            f"yes_ratio {100 * m['yes_ratio']:.2f} (%); report in {cfg.out_dir}")


def write_pope_lmms(cfg, metrics: dict) -> Path | None:
    """The finished run's answers (answers_<split>.jsonl) in lmms-eval's layout under out_dir/lmms_eval/; None for a
    run that skipped media (lmms-eval has no left-out questions)."""
    if "skipped_media" in metrics:
        return None
    splits = load_pope_questions(cfg)
    answers = {}
    for split, (_, questions) in splits.items():
        preds = pope.read_answers(Path(cfg.out_dir) / f"answers_{split}.jsonl", questions)
        answers[split] = {str(q.question_id): (p.answer, q.prompt(pope_suffix(cfg.prompt_suffix)))
                          for q, p in zip(questions, preds)}
    return interop.write_pope(cfg.out_dir, cfg.model.path, splits, answers, _lmms_settings(cfg))


POPE = Command(
    "mmpo eval pope --questions Q --answers A [--parser P] [--out M.json] | --config F [key=value ...]",
    (Flag("--questions", "question file (score an existing answers file)"),
     Flag("--answers", "answers JSONL to score (mmpo / official layout), an lmms-eval samples file or a VLMEvalKit "
                       "prediction table (.tsv)"),
     Flag("--parser", "the reference parser of the answers", dict(default="official", choices=sorted(pope.PARSERS)))),
    _score_pope, needs=("--questions", "--answers"), summary=_pope_summary, lmms=write_pope_lmms)


# ---------------------------------------------------------------- VideoHallucer


def _vh_summary(cfg, res: dict) -> str:
    lines = [f"{cat}: pair accuracy {100 * r['pair_accuracy']:.1f}%" for cat, r in res.items()]  # %, as report.md
    return "\n".join([*lines, f"report in {cfg.out_dir}"])


VIDEOHALLUCER = Command(
    "mmpo eval videohallucer --data CATEGORY.json --answers A [--out M.json] | --config F [key=value ...]",
    (Flag("--data", "category data file (score an existing results file)"),
     Flag("--answers", "results file in the reference layout (pairs with 'predict')")),
    lambda a, _: videohallucer_metrics.score_answers_file(a.data, a.answers, unanswered=a.unanswered),
    needs=("--data", "--answers"), summary=_vh_summary)


# ---------------------------------------------------------------- CHAIR


def _score_chair(a: argparse.Namespace, _) -> dict:
    answered = interop.read_chair_samples(a.answers) if interop.detect(a.answers) == "lmms-eval" else None
    return chair.score_answers_file(a.annotations, a.answers, a.captions, a.lemmatizer, a.vocabulary, answered)


def _chair_summary(cfg, m: dict) -> str:
    return (f"CHAIR: CHAIR_s {100 * m['chair_s']:.2f} CHAIR_i {100 * m['chair_i']:.2f} recall "
            f"{100 * m['recall']:.2f} (%) over {m['n_captions']} captions, lemmatizer {m['lemmatizer_backend']}; "
            f"report in {cfg.out_dir}")


def write_chair_lmms(cfg, metrics: dict) -> Path:
    """The finished run's answers.jsonl in lmms-eval's layout under out_dir/lmms_eval/: the ground truth as the run
    read it, the mentioned classes from its metrics' per-caption rows."""
    parsed = files.load_annotations(cfg.annotations)
    images = chair.read_images(cfg.annotations, cfg.captions or None, Lemmatizer(cfg.lemmatizer),
                               chair.load_vocabulary(cfg.vocabulary, cfg.annotations, parsed), parsed)
    gt = {im.image_id: sorted(im.gt_objects) for im in images}
    mentioned = {p["image_id"]: [c for _, c in p["mentioned"]] for p in metrics["captions"]}
    captions = chair.read_captions(Path(cfg.out_dir) / "answers.jsonl")
    return interop.write_chair(cfg.out_dir, cfg.model.path, captions, gt, mentioned, cfg.prompt,
                               {**_lmms_settings(cfg), "lemmatizer": cfg.lemmatizer})


CHAIR = Command(
    "mmpo eval chair --annotations GT --answers A [--captions C] [--lemmatizer L] [--vocabulary V] [--out M.json] | "
    "--config F [key=value ...] (caption every image with a model, then score)",
    (Flag("--annotations", "COCO instances JSON, or a ground-truth JSONL (image_id, gt_objects)"),
     Flag("--captions", "COCO captions JSON: ground truth also from reference captions (as the original)"),
     Flag("--answers", "captions JSONL to score: image_id + caption (or an lmms-eval coco_cap_chair samples file)"),
     Flag("--lemmatizer", "auto: NLTK's reference pipeline where its data is installed, else the offline table",
          dict(default="auto", choices=("auto", "table", "nltk"))),
     Flag("--vocabulary", "coco: the reference's COCO lists; categories: the --annotations file's own category names",
          dict(default="coco", choices=chair.VOCABULARIES))),
    _score_chair, needs=("--annotations", "--answers"), summary=_chair_summary, unanswered=False,
    lmms=write_chair_lmms, printed=lambda m: {k: v for k, v in m.items() if k != "captions"})  # --out keeps them


# ---------------------------------------------------------------- AMBER


def amber_summary(mode: str, m: dict) -> str:
    """The console line of an AMBER run: every dimension report.md has, named, in the reference's %.

    No "overall" unless all three dimensions were asked: `inference.py` prints it only then, so the line says so
    instead of passing one dimension's numbers off as the whole.
    """
    rows = [(d, m[d]) for d in ("overall", *amber.DIMENSIONS) if d in m]
    parts = "; ".join(f"{d} accuracy {r['accuracy']:.1f} F1 {r['f1']:.1f}" for d, r in rows)
    if "overall" not in m:
        parts += " (no overall: the reference reports it only when all three dimensions are asked)"
    return (f"AMBER ({mode}, %): {parts}; {m['n_questions']} questions, {m['n_unparsed']} answers neither "
            f"Yes nor No")


AMBER = Command(
    "mmpo eval amber --questions QUERY.json --annotations annotations.json --answers R.json [--out M.json] | "
    "--config F [key=value ...] (answer with a model, then score)",
    (Flag("--questions", "AMBER data/query/query_discriminative*.json"),
     Flag("--annotations", "AMBER data/annotations.json"),
     Flag("--answers", '[{"id", "response"}] (inference.py --inference_data)')),
    lambda a, _: amber.score_answers_file(a.questions, a.annotations, a.answers, a.unanswered),
    needs=("--questions", "--annotations", "--answers"),
    summary=lambda cfg, m: amber_summary(cfg.mode, m) + f"; report in {cfg.out_dir}")


# ---------------------------------------------------------------- EventHallusion


def _eh_summary(cfg, m: dict) -> str:
    splits = ", ".join(f"{s} {100 * r['accuracy']:.2f}" for s, r in m["splits"].items())  # %, as report.md
    return f"EventHallusion ({cfg.mode}): accuracy {100 * m['accuracy']:.2f} ({splits}) (%); report in {cfg.out_dir}"


EVENTHALLUSION = Command(
    "mmpo eval eventhallusion --questions F [F ...] --answers PREDICTIONS.json [--out M.json] | "
    "--config F [key=value ...] (answer with a model, then score)",
    (Flag("--questions", "questions/<split>_questions.json files", dict(nargs="+")),
     Flag("--answers", "predictions JSON in the reference layout (eval.py --input_file)")),
    lambda a, _: eventhallusion.score_answers_file(a.questions, a.answers, a.unanswered),
    needs=("--questions", "--answers"), summary=_eh_summary)


# ---------------------------------------------------------------- HallusionBench


def _score_hallusionbench(a: argparse.Namespace, _) -> dict:
    tool = interop.detect(a.answers)  # lmms-eval samples / VLMEvalKit table (mmpo/eval/interop.py), else the reference's
    preds = {"lmms-eval": interop.read_hb_samples, "vlmevalkit": interop.read_hb_table}[tool](a.answers) if tool else None
    return hallusionbench.score_answers_file(a.questions, a.answers, a.parser, a.unanswered, preds)


def _hb_summary(cfg, m: dict) -> str:
    cats = ", ".join(f"{c} qAcc {100 * r['qAcc']:.2f}" for c, r in m["categories"].items())
    return (f"HallusionBench ({cfg.mode}, rule {cfg.parser}, %): qAcc {100 * m['qAcc']:.2f} fAcc "
            f"{100 * m['fAcc']:.2f} aAcc {100 * m['aAcc']:.2f} ({cats}) over {m['n_questions']} questions; "
            f"report in {cfg.out_dir}")


def write_hallusionbench_lmms(cfg, metrics: dict) -> Path:
    """The finished run's answers.json (the reference result layout) in lmms-eval's layout under out_dir/lmms_eval/,
    valued by lmms-eval's offline rule whatever `parser` scored the run."""
    answers = Path(cfg.out_dir) / "answers.json"
    items = files.load_array(answers, "answered questions")
    preds = hallusionbench.read_predictions(answers)
    m = hallusionbench.score(hallusionbench.read_questions(answers), preds, "lmms")
    return interop.write_hallusionbench(cfg.out_dir, cfg.model.path,
                                        [{k: v for k, v in it.items() if k != "model_prediction"} for it in items],
                                        [it["model_prediction"] for it in items],
                                        {k: m[k] for k in interop.HB_METRICS}, _lmms_settings(cfg))


HALLUSIONBENCH = Command(
    "mmpo eval hallusionbench --questions HallusionBench.json --answers A.json [--parser P] [--out M.json] | "
    "--config F [key=value ...] (answer with a model, then score)",
    (Flag("--questions", "HallusionBench.json (the release's question file)"),
     Flag("--answers", "its items with 'model_prediction' (the reference result layout), an lmms-eval samples file "
                       "or a VLMEvalKit prediction table (.tsv)"),
     Flag("--parser", "lmms: 'yes' anywhere in the answer (lmms-eval); vlmevalkit: YOrN_Extraction",
          dict(default="lmms", choices=hallusionbench.PARSERS))),
    _score_hallusionbench, needs=("--questions", "--answers"), summary=_hb_summary, lmms=write_hallusionbench_lmms)


# ---------------------------------------------------------------- pope-build


def _build_pope(a: argparse.Namespace, p: argparse.ArgumentParser) -> None:
    """`--reference` (= `--tie-break first_seen --legacy-typo`) gives the questions of the reference code, as
    `pope_build.build(..., tie_break="first_seen", legacy_typo=True)` does; the default fixes its a/an typo
    and breaks count ties by name (see mmpo/eval/pope_build.py)."""
    if a.reference and a.tie_break == "name":
        p.error("--reference means --tie-break first_seen; drop one of them")
    tie_break = "first_seen" if a.reference else a.tie_break or "name"
    built = pope_build.build_files(a.annotations, a.out, a.dataset, seed=a.seed, img_num=a.num_images,
                                   sample_num=a.sample_num, tie_break=tie_break,
                                   legacy_typo=a.reference or a.legacy_typo)
    for split, path in built.items():
        print(f"{split}: {path}")


POPE_BUILD = Command(
    "mmpo eval pope-build --annotations COCO.json --out DIR [--seed S --num-images N --sample-num 3]",
    (Flag("--annotations", "COCO instances JSON or ground-truth JSONL", dict(required=True)),
     Flag("--out", "output folder for the three split files", dict(required=True)),
     Flag("--seed", "sampling seed", dict(type=int, default=0)),
     Flag("--num-images", "images sampled (reference default 500)", dict(type=int, default=500)),
     Flag("--sample-num", "positive (and negative) questions per image", dict(type=int, default=3)),
     Flag("--dataset", "file-name prefix", dict(default="coco")),
     Flag("--tie-break", "order of equal counts: name (default) or first_seen (the reference's dict order)",
          dict(choices=("name", "first_seen"))),
     Flag("--legacy-typo", 'the reference\'s a/an bug: "Is there an umbrella in the imange?"',
          dict(action="store_true")),
     Flag("--reference", "the reference code's rules (AoiDragon/POPE): --tie-break first_seen --legacy-typo",
          dict(action="store_true"))),
    _build_pope)
