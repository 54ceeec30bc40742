"""`mmpo eval NAME`: run a model from a config, score an answers file, or (pope-build) build POPE question files
from COCO-style annotations. mmpo/app/cli.py calls `EVALUATORS[NAME].command` with the benchmark's own flags.

Each benchmark's `--config F [key=value ...]` loads F into its config class and calls its runner, both read from
`eval.EVALUATORS` (`_run_config`); the scoring flags (`--questions`, `--answers`, ...) score a finished file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmpo.config import load, to_dict
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
    sharding,
    videohallucer_metrics,
)
from mmpo.metrics import Trackers, check_trackers, flatten
from mmpo.model_card import append_eval_results


def _print_metrics(metrics: dict, out: str | None) -> None:
    text = json.dumps(metrics, indent=2)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")


def _unanswered_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--unanswered", default="error", choices=files.UNANSWERED,
                   help="error: every question needs an answer; skip: score the answered ones (the answers file of a "
                        "run with on_bad_media: skip)")


def _config_flags(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument("--config", help=f"eval YAML (configs/eval/{name}*.yaml): run a model")
    p.add_argument("overrides", nargs="*", help="key=value overrides for --config")


def _run_config(name: str, a: argparse.Namespace) -> tuple[object, dict]:
    """Load `--config` (+ overrides) into the benchmark's config class and run its model runner.

    Returns:
        (config, metrics).
    """
    from mmpo.eval import EVALUATORS  # here, not at the top: eval/__init__ imports this module to build the registry

    evaluator = EVALUATORS[name]
    cfg = load(evaluator.config, a.config, a.overrides)
    check_trackers(getattr(cfg, "report_to", []), f"{a.config}: report_to")  # a missing package: before answering
    metrics = sharding.run(evaluator.run, cfg)  # one process, or this rank's share of N (mmpo/eval/sharding.py)
    if metrics is None:  # another rank of an N-process run: the main one scores, reports and prints
        raise SystemExit(0)
    publish(name, cfg, metrics)
    return cfg, metrics


def publish(name: str, cfg, metrics: dict) -> None:
    """The metrics to the configured trackers, and to the model card of the evaluated adapter (or mmpo model)."""
    numbers = {k.replace(".", "/"): v for k, v in flatten(metrics).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    trackers = Trackers(getattr(cfg, "report_to", []), cfg.out_dir, run_name=f"eval-{name}-{Path(cfg.out_dir).name}",
                        config={"benchmark": name, **to_dict(cfg)})
    trackers.log({f"{name}/{k}": v for k, v in numbers.items()}, step=0)
    trackers.finish()
    if name == "pope" and "skipped_media" not in metrics:  # lmms-eval's results/samples layout, for its users
        print(f"lmms-eval layout: {_write_pope_lmms(cfg)}")
    if name == "hallusionbench":
        print(f"lmms-eval layout: {_write_hb_lmms(cfg)}")
    if name == "chair":
        print(f"lmms-eval layout: {_write_chair_lmms(cfg, metrics)}")
    card = append_eval_results(cfg.model.adapter or cfg.model.path, name, metrics, cfg.out_dir)
    if card is not None:
        print(f"results added to the model card {card}")


def _write_pope_lmms(cfg) -> Path:
    """The finished run's answers (answers_<split>.jsonl) in lmms-eval's layout under out_dir/lmms_eval/."""
    from mmpo.eval.runner import load_pope_questions, pope_suffix

    splits = load_pope_questions(cfg)
    answers = {}
    for split, (_, questions) in splits.items():
        preds = pope.read_answers(Path(cfg.out_dir) / f"answers_{split}.jsonl", questions)
        answers[split] = {str(q.question_id): (p.answer, q.prompt(pope_suffix(cfg.prompt_suffix)))
                          for q, p in zip(questions, preds)}
    return interop.write_pope(cfg.out_dir, cfg.model.path, splits, answers, _lmms_settings(cfg))


def _lmms_settings(cfg) -> dict:
    """What lmms-eval's results file records of the run (`config`)."""
    return {"model_args": f"pretrained={cfg.model.path}" + (f",adapter={cfg.model.adapter}" if cfg.model.adapter
                                                            else ""),
            "mode": cfg.mode, "max_new_tokens": cfg.max_new_tokens, "batch_size": cfg.batch_size}


def _write_hb_lmms(cfg) -> Path:
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


def _write_chair_lmms(cfg, metrics: dict) -> Path:
    """The finished run's answers.jsonl in lmms-eval's layout under out_dir/lmms_eval/: the ground truth as the run
    read it, the mentioned classes from its metrics' per-caption rows."""
    from mmpo.eval.chair_words import Lemmatizer

    parsed = chair.load_annotations(cfg.annotations)
    images = chair.read_images(cfg.annotations, cfg.captions or None, Lemmatizer(cfg.lemmatizer),
                               chair.load_vocabulary(cfg.vocabulary, cfg.annotations, parsed), parsed)
    gt = {im.image_id: sorted(im.gt_objects) for im in images}
    mentioned = {p["image_id"]: [c for _, c in p["mentioned"]] for p in metrics["captions"]}
    captions = chair.read_captions(Path(cfg.out_dir) / "answers.jsonl")
    return interop.write_chair(cfg.out_dir, cfg.model.path, captions, gt, mentioned, cfg.prompt,
                               {**_lmms_settings(cfg), "lemmatizer": cfg.lemmatizer})


def _score_pope_samples(questions_path: str, samples_path: str, parser: str) -> dict:
    """An lmms-eval samples file or VLMEvalKit table scored as `pope_metrics.score_answers_file` scores mmpo's own
    answer files."""
    questions = pope.read_questions(questions_path)
    read = interop.read_pope_table if interop.detect(samples_path) == "vlmevalkit" else interop.read_samples
    preds = read(samples_path, questions)
    return {**pope_metrics._score_questions(questions, preds, parser, None, questions_path), "n_unanswered": 0}


def cli_pope(args: list[str]) -> int:
    """`mmpo eval pope --questions Q --answers A [--parser P] [--out M.json]` or `--config F [key=value ...]`."""
    p = argparse.ArgumentParser(prog="mmpo eval pope")
    p.add_argument("--questions", help="question file (score an existing answers file)")
    p.add_argument("--answers", help="answers JSONL to score (mmpo / official layout), an lmms-eval samples file or a "
                   "VLMEvalKit prediction table (.tsv)")
    p.add_argument("--parser", default="official", choices=sorted(pope.PARSERS))
    p.add_argument("--out", help="write the metrics JSON here")
    _unanswered_flag(p)
    _config_flags(p, "pope")
    a = p.parse_intermixed_args(args)
    if a.config:
        cfg, m = _run_config("pope", a)
        # in %, as report.md prints them
        print(f"POPE ({cfg.mode}, parser {cfg.parser}): F1 {100 * m['f1']:.2f} accuracy {100 * m['accuracy']:.2f} "
              f"yes_ratio {100 * m['yes_ratio']:.2f} (%); report in {cfg.out_dir}")
        return 0
    if not (a.questions and a.answers):
        p.error("give --questions and --answers (score a file) or --config (run a model)")
    if interop.detect(a.answers):  # lmms-eval samples / VLMEvalKit table (mmpo/eval/interop.py), detected by its fields
        _print_metrics(_score_pope_samples(a.questions, a.answers, a.parser), a.out)
        return 0
    _print_metrics(pope_metrics.score_answers_file(a.questions, a.answers, a.parser, unanswered=a.unanswered), a.out)
    return 0


def cli_videohallucer(args: list[str]) -> int:
    """`mmpo eval videohallucer --data CATEGORY.json --answers A [--out M.json]` or `--config F [key=value ...]`."""
    p = argparse.ArgumentParser(prog="mmpo eval videohallucer")
    p.add_argument("--data", help="category data file (score an existing results file)")
    p.add_argument("--answers", help="results file in the reference layout (pairs with 'predict')")
    p.add_argument("--out", help="write the metrics JSON here")
    _unanswered_flag(p)
    _config_flags(p, "videohallucer")
    a = p.parse_intermixed_args(args)
    if a.config:
        cfg, res = _run_config("videohallucer", a)
        for cat, r in res.items():  # in %, as report.md prints them
            print(f"{cat}: pair accuracy {100 * r['pair_accuracy']:.1f}%")
        print(f"report in {cfg.out_dir}")
        return 0
    if not (a.data and a.answers):
        p.error("give --data and --answers (score a file) or --config (run a model)")
    _print_metrics(videohallucer_metrics.score_answers_file(a.data, a.answers, unanswered=a.unanswered), a.out)
    return 0


def cli_pope_build(args: list[str]) -> int:
    """`mmpo eval pope-build --annotations COCO.json --out DIR [--seed S --num-images N --sample-num 3]`.

    `--reference` (= `--tie-break first_seen --legacy-typo`) gives the questions of the reference code, as
    `pope_build.build(..., tie_break="first_seen", legacy_typo=True)` does; the default fixes its a/an typo
    and breaks count ties by name (see mmpo/eval/pope_build.py).
    """
    p = argparse.ArgumentParser(prog="mmpo eval pope-build")
    p.add_argument("--annotations", required=True, help="COCO instances JSON or ground-truth JSONL")
    p.add_argument("--out", required=True, help="output folder for the three split files")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-images", type=int, default=500, help="images sampled (reference default 500)")
    p.add_argument("--sample-num", type=int, default=3, help="positive (and negative) questions per image")
    p.add_argument("--dataset", default="coco", help="file-name prefix")
    p.add_argument("--tie-break", choices=("name", "first_seen"),
                   help="order of equal counts: name (default) or first_seen (the reference's dict order)")
    p.add_argument("--legacy-typo", action="store_true",
                   help='the reference\'s a/an bug: "Is there an umbrella in the imange?"')
    p.add_argument("--reference", action="store_true",
                   help="the reference code's rules (AoiDragon/POPE): --tie-break first_seen --legacy-typo")
    a = p.parse_args(args)
    if a.reference and a.tie_break == "name":
        p.error("--reference means --tie-break first_seen; drop one of them")
    tie_break = "first_seen" if a.reference else a.tie_break or "name"
    files = pope_build.build_files(a.annotations, a.out, a.dataset, seed=a.seed, img_num=a.num_images,
                                   sample_num=a.sample_num, tie_break=tie_break,
                                   legacy_typo=a.reference or a.legacy_typo)
    for split, path in files.items():
        print(f"{split}: {path}")
    return 0


def cli_chair(args: list[str]) -> int:
    """`mmpo eval chair --annotations GT --answers A [--captions C] [--lemmatizer L] [--vocabulary V] [--out M.json]` or
    `--config F [key=value ...]` (caption every image with a model, then score)."""
    p = argparse.ArgumentParser(prog="mmpo eval chair")
    p.add_argument("--annotations", help="COCO instances JSON, or a ground-truth JSONL (image_id, gt_objects)")
    p.add_argument("--captions", help="COCO captions JSON: ground truth also from reference captions (as the original)")
    p.add_argument("--answers", help="captions JSONL to score: image_id + caption (or an lmms-eval coco_cap_chair "
                   "samples file)")
    p.add_argument("--lemmatizer", default="auto", choices=("auto", "table", "nltk"),
                   help="auto: NLTK's reference pipeline where its data is installed, else the offline table")
    p.add_argument("--vocabulary", default="coco", choices=chair.VOCABULARIES,
                   help="coco: the reference's COCO lists; categories: the --annotations file's own category names")
    p.add_argument("--out", help="write the metrics JSON here")
    _config_flags(p, "chair")
    a = p.parse_intermixed_args(args)
    if a.config:
        cfg, m = _run_config("chair", a)
        print(f"CHAIR: CHAIR_s {100 * m['chair_s']:.2f} CHAIR_i {100 * m['chair_i']:.2f} recall "
              f"{100 * m['recall']:.2f} (%) over {m['n_captions']} captions, lemmatizer {m['lemmatizer_backend']}; "
              f"report in {cfg.out_dir}")
        return 0
    if not (a.annotations and a.answers):
        p.error("give --annotations and --answers (score a file) or --config (run a model)")
    answered = interop.read_chair_samples(a.answers) if interop.detect(a.answers) == "lmms-eval" else None
    m = chair.score_answers_file(a.annotations, a.answers, a.captions, a.lemmatizer, a.vocabulary, answered)
    _print_metrics({k: v for k, v in m.items() if k != "captions"}, None)
    if a.out:  # the file keeps the per-caption details
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(m, indent=2) + "\n")
    return 0


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


def cli_amber(args: list[str]) -> int:
    """`mmpo eval amber --questions QUERY.json --annotations annotations.json --answers R.json [--out M.json]` or
    `--config F [key=value ...]` (answer with a model, then score)."""
    p = argparse.ArgumentParser(prog="mmpo eval amber")
    p.add_argument("--questions", help="AMBER data/query/query_discriminative*.json")
    p.add_argument("--annotations", help="AMBER data/annotations.json")
    p.add_argument("--answers", help='[{"id", "response"}] (inference.py --inference_data)')
    p.add_argument("--out", help="write the metrics JSON here")
    _unanswered_flag(p)
    _config_flags(p, "amber")
    a = p.parse_intermixed_args(args)
    if a.config:
        cfg, m = _run_config("amber", a)
        print(amber_summary(cfg.mode, m) + f"; report in {cfg.out_dir}")
        return 0
    if not (a.questions and a.annotations and a.answers):
        p.error("give --questions, --annotations and --answers (score a file) or --config (run a model)")
    _print_metrics(amber.score_answers_file(a.questions, a.annotations, a.answers, a.unanswered), a.out)
    return 0


def cli_eventhallusion(args: list[str]) -> int:
    """`mmpo eval eventhallusion --questions F [F ...] --answers PREDICTIONS.json [--out M.json]` or
    `--config F [key=value ...]` (answer with a model, then score)."""
    p = argparse.ArgumentParser(prog="mmpo eval eventhallusion")
    p.add_argument("--questions", nargs="+", help="questions/<split>_questions.json files")
    p.add_argument("--answers", help="predictions JSON in the reference layout (eval.py --input_file)")
    p.add_argument("--out", help="write the metrics JSON here")
    _unanswered_flag(p)
    _config_flags(p, "eventhallusion")
    a = p.parse_intermixed_args(args)
    if a.config:
        cfg, m = _run_config("eventhallusion", a)
        splits = ", ".join(f"{s} {100 * r['accuracy']:.2f}" for s, r in m["splits"].items())  # %, as report.md
        print(f"EventHallusion ({cfg.mode}): accuracy {100 * m['accuracy']:.2f} ({splits}) (%); report in {cfg.out_dir}")
        return 0
    if not (a.questions and a.answers):
        p.error("give --questions and --answers (score a file) or --config (run a model)")
    _print_metrics(eventhallusion.score_answers_file(a.questions, a.answers, a.unanswered), a.out)
    return 0


def cli_hallusionbench(args: list[str]) -> int:
    """`mmpo eval hallusionbench --questions HallusionBench.json --answers A.json [--parser P] [--out M.json]` or
    `--config F [key=value ...]` (answer with a model, then score)."""
    p = argparse.ArgumentParser(prog="mmpo eval hallusionbench")
    p.add_argument("--questions", help="HallusionBench.json (the release's question file)")
    p.add_argument("--answers", help="its items with 'model_prediction' (the reference result layout), an "
                   "lmms-eval samples file or a VLMEvalKit prediction table (.tsv)")
    p.add_argument("--parser", default="lmms", choices=hallusionbench.PARSERS,
                   help="lmms: 'yes' anywhere in the answer (lmms-eval); vlmevalkit: YOrN_Extraction")
    p.add_argument("--out", help="write the metrics JSON here")
    _unanswered_flag(p)
    _config_flags(p, "hallusionbench")
    a = p.parse_intermixed_args(args)
    if a.config:
        cfg, m = _run_config("hallusionbench", a)
        cats = ", ".join(f"{c} qAcc {100 * r['qAcc']:.2f}" for c, r in m["categories"].items())
        print(f"HallusionBench ({cfg.mode}, rule {cfg.parser}, %): qAcc {100 * m['qAcc']:.2f} fAcc "
              f"{100 * m['fAcc']:.2f} aAcc {100 * m['aAcc']:.2f} ({cats}) over {m['n_questions']} questions; "
              f"report in {cfg.out_dir}")
        return 0
    if not (a.questions and a.answers):
        p.error("give --questions and --answers (score a file) or --config (run a model)")
    tool = interop.detect(a.answers)  # lmms-eval samples / VLMEvalKit table (mmpo/eval/interop.py), else the reference's
    preds = {"lmms-eval": interop.read_hb_samples, "vlmevalkit": interop.read_hb_table}[tool](a.answers) if tool else None
    _print_metrics(hallusionbench.score_answers_file(a.questions, a.answers, a.parser, a.unanswered, preds), a.out)
    return 0
