"""Write evaluation outputs: metrics.json, a markdown report, and PNG plots (matplotlib, Agg backend).

Inputs are the plain dicts the scorers return: `eval.pope_metrics` (one split from `score_predictions`, or
several from `aggregate`), `eval.videohallucer_metrics` (`{category: score_category(...)}` plus optional
"overall"), `eval.chair.score`, `eval.amber.score`, `eval.eventhallusion.score` and `eval.hallusionbench.score`,
each with the runner's additions ("mode", "skipped_media"). matplotlib is imported inside the plot functions so
scoring never needs it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

POPE_KEYS = ("accuracy", "precision", "recall", "f1", "yes_ratio")
VH_KEYS = ("basic_accuracy", "hallucinated_accuracy", "pair_accuracy")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: CI and GPU boxes have no display
    import matplotlib.pyplot as plt

    return plt


def pope_splits(result: dict) -> dict[str, dict]:
    """{split: result} for a single-split or aggregated POPE result."""
    return result["splits"] if "splits" in result else {result.get("split") or "all": result}


def write_metrics(path: str | Path, result: dict) -> Path:
    """metrics.json: the result dict as is (plain top-level keys such as accuracy/f1 or pair_accuracy)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def pope_markdown(result: dict) -> str:
    """Markdown table: one row per split (+ mean and pooled rows), metrics in %, and the provenance."""
    head = "| split | " + " | ".join(POPE_KEYS) + " | TP | FP | TN | FN | unknown | N |"
    rows = [head, "|" + "---|" * (len(POPE_KEYS) + 7)]

    def row(name: str, r: dict) -> str:
        counts = " | ".join(str(r.get(k, "")) for k in ("tp", "fp", "tn", "fn", "unknown", "n"))
        return f"| {name} | " + " | ".join(f"{100 * r[k]:.2f}" for k in POPE_KEYS) + f" | {counts} |"

    for name, r in pope_splits(result).items():
        rows.append(row(name, r))
    if "splits" in result:
        rows.append(row("**mean of splits**", result))
        rows.append(row("pooled", result["pooled"]))
    files = result.get("question_files") or {result.get("split") or "all": result.get("question_file")}
    prov = [f"- parser: `{result.get('parser')}`", f"- prompt suffix: `{result.get('prompt_suffix')!r}`",
            f"- aggregation: `{result.get('aggregation')}`"]
    prov += [f"- question file ({k}): `{(v or {}).get('name')}`, {(v or {}).get('count')} questions"
             for k, v in files.items()]
    if "skipped_media" in result:  # on_bad_media: skip
        s = result["skipped_media"]
        prov.append(f"- skipped: {s['n_questions']} questions on {s['n_files']} unreadable images "
                    "(named in metrics.json)")
    return "# POPE\n\n" + "\n".join(rows) + "\n\n" + "\n".join(prov) + "\n"


def videohallucer_markdown(results: dict[str, dict]) -> str:
    """Markdown table: one row per category (+ overall), accuracies in %, and bias scores when present."""
    rows = ["| category | pairs | basic | hallucinated | pair | yes diff | fp ratio |", "|---|---|---|---|---|---|---|"]
    for cat, r in results.items():
        if cat == "overall":
            continue
        bias = r.get("bias", {})
        extra = [f"{bias[k]:.3f}" if k in bias else "" for k in ("ydp", "fpr")]
        rows.append(f"| {cat} | {r['n_pairs']} | " + " | ".join(f"{100 * r[k]:.1f}" for k in VH_KEYS)
                    + " | " + " | ".join(extra) + " |")
    if "overall" in results:
        o = results["overall"]
        rows.append("| **overall** | | " + " | ".join(f"{100 * o[k]:.1f}" for k in VH_KEYS) + " | | |")
    notes = [f"- {cat}: skipped {r['skipped_media']['n_pairs']} pairs on {r['skipped_media']['n_files']} "
             "unreadable videos (named in metrics.json)" for cat, r in results.items() if "skipped_media" in r]
    if notes:  # on_bad_media: skip
        rows += [""] + notes
    return "# VideoHallucer\n\n" + "\n".join(rows) + "\n"


def plot_pope_splits(result: dict, path: str | Path) -> Path:
    """Bar chart of F1 and yes-ratio per split (the yes-ratio shows a model's bias toward "yes")."""
    plt = _pyplot()
    splits = pope_splits(result)
    names = list(splits)
    x = range(len(names))
    fig, ax = plt.subplots(figsize=(1.8 * len(names) + 2, 3.2))
    ax.bar([i - 0.2 for i in x], [splits[n]["f1"] for n in names], 0.4, label="F1")
    ax.bar([i + 0.2 for i in x], [splits[n]["yes_ratio"] for n in names], 0.4, label="yes ratio")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")  # balanced files: an unbiased model answers yes half the time
    ax.set_xticks(list(x), names)
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right")
    ax.set_title(f"POPE per split (parser: {result.get('parser')})", fontsize=9)
    return _save(fig, plt, path)


def plot_pope_confusion(result: dict, path: str | Path) -> Path:
    """Stacked bars per split: TP, FN (label yes) and FP, TN (label no), plus unknowns."""
    plt = _pyplot()
    splits = pope_splits(result)
    names = list(splits)
    fig, ax = plt.subplots(figsize=(1.8 * len(names) + 2, 3.2))
    bottom = [0] * len(names)
    for key in ("tp", "fn", "fp", "tn", "unknown"):
        vals = [splits[n][key] for n in names]
        ax.bar(names, vals, bottom=bottom, label=key.upper())
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_ylabel("questions")
    ax.set_title("POPE confusion counts", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, plt, path)


def plot_videohallucer(results: dict[str, dict], path: str | Path) -> Path:
    """Grouped bars per category: basic, hallucinated and pair accuracy."""
    plt = _pyplot()
    names = [c for c in results if c != "overall"] + (["overall"] if "overall" in results else [])
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2, 3.2))
    for j, key in enumerate(VH_KEYS):
        ax.bar([i + (j - 1) * 0.27 for i in range(len(names))], [results[c][key] for c in names], 0.27, label=key)
    ax.set_xticks(range(len(names)), names, rotation=20, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_title("VideoHallucer accuracy per category", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, plt, path)


def _save(fig, plt, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_files(out_dir: str | Path, metrics: dict, markdown: str, plots: dict[str, tuple[Callable, str]],
                result: dict | None = None) -> dict[str, Path]:
    """What every benchmark writes under `out_dir`: metrics.json, report.md and its plots.

    Args:
        metrics: what metrics.json holds.
        markdown: the report's text.
        plots: {key in the returned dict: (plot function(result, path), file name)}.
        result: what the plots draw (default: `metrics`).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(markdown, encoding="utf-8")
    written = {"metrics": write_metrics(out / "metrics.json", metrics), "report": out / "report.md"}
    return written | {key: plot(metrics if result is None else result, out / name)
                      for key, (plot, name) in plots.items()}


def write_pope_report(out_dir: str | Path, result: dict) -> dict[str, Path]:
    """metrics.json, report.md, pope_splits.png and pope_confusion.png under `out_dir`."""
    return write_files(out_dir, result, pope_markdown(result),
                       {"splits_plot": (plot_pope_splits, "pope_splits.png"),
                        "confusion_plot": (plot_pope_confusion, "pope_confusion.png")})


def write_videohallucer_report(out_dir: str | Path, results: dict[str, dict]) -> dict[str, Path]:
    """metrics.json (plain overall keys at the top level, per category under "categories"), report.md,
    videohallucer.png under `out_dir`."""
    cats = {c: r for c, r in results.items() if c != "overall"}
    metrics = {**results.get("overall", {}), "categories": cats}
    skips = [r["skipped_media"] for r in cats.values() if "skipped_media" in r]
    if skips:  # on_bad_media: skip; the per-category details stay under "categories"
        files = {k: v for s in skips for k, v in s["files"].items()}
        metrics["skipped_media"] = {"n_pairs": sum(s["n_pairs"] for s in skips), "n_files": len(files), "files": files}
    return write_files(out_dir, metrics, videohallucer_markdown(results),
                       {"plot": (plot_videohallucer, "videohallucer.png")}, result=results)


# ---------------------------------------------------------------- CHAIR, AMBER, EventHallusion


def _skipped_line(result: dict, unit: str) -> list[str]:
    """The report line naming what `on_bad_media: skip` left out (none when nothing was skipped)."""
    s = result.get("skipped_media")
    if not s or not s["n_files"]:
        return []
    return [f"- skipped: {s[f'n_{unit}']} {unit} on {s['n_files']} unreadable files (named in metrics.json)"]


def chair_markdown(result: dict) -> str:
    """One row of CHAIR_s, CHAIR_i and recall in %, counts, the most hallucinated objects, and the provenance."""
    rows = ["| CHAIR_s | CHAIR_i | recall | captions | object mentions | hallucinated | mentions per caption |",
            "|---|---|---|---|---|---|---|",
            f"| {100 * result['chair_s']:.2f} | {100 * result['chair_i']:.2f} | {100 * result['recall']:.2f} | "
            f"{result['n_captions']} | {result['n_mentions']} | {result['n_hallucinated']} | "
            f"{result['mean_mentions']:.2f} |"]
    counts: dict[str, int] = {}
    for cap in result.get("captions", []):
        for _, cls in cap["hallucinated"]:
            counts[cls] = counts.get(cls, 0) + 1
    top = ", ".join(f"{c} ({n})" for c, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:10])
    prov = [f"- prompt: `{result.get('prompt')!r}`", f"- lemmatizer: {result.get('lemmatizer')}",
            f"- vocabulary: `{result.get('vocabulary', 'coco')}`", f"- ground truth: `{result.get('ground_truth_file')}`",
            f"- most hallucinated: {top or 'none'}"]
    return "# CHAIR\n\n" + "\n".join(rows) + "\n\n" + "\n".join(prov + _skipped_line(result, "images")) + "\n"


def plot_chair(result: dict, path: str | Path) -> Path:
    """CHAIR_s, CHAIR_i and recall as bars, and how many captions hallucinate 0, 1, 2, 3+ objects."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(7, 3.2))
    names = ["chair_s", "chair_i", "recall"]
    left.bar(["CHAIR_s", "CHAIR_i", "recall"], [result[k] for k in names], color=["C3", "C1", "C0"])
    left.set_ylim(0, 1)
    left.set_title("CHAIR (lower is better; recall higher)", fontsize=9)
    per = [min(len(c["hallucinated"]), 3) for c in result.get("captions", [])]
    right.bar(["0", "1", "2", "3+"], [per.count(k) for k in range(4)], color="C3")
    right.set_xlabel("hallucinated objects in a caption")
    right.set_ylabel("captions")
    return _save(fig, plt, path)


def write_chair_report(out_dir: str | Path, result: dict) -> dict[str, Path]:
    """metrics.json (with the per-caption details), report.md and chair.png under `out_dir`."""
    return write_files(out_dir, result, chair_markdown(result), {"plot": (plot_chair, "chair.png")})


AMBER_KEYS = ("accuracy", "precision", "recall", "f1")


def _amber_rows(result: dict) -> dict[str, dict]:
    """{row name: block} in report order: overall, the dimensions, the attribute parts after attribute."""
    rows = {}
    for name in ("overall", "existence", "attribute", "relation"):
        if name in result:
            rows[name] = result[name]
        if name == "attribute" and "attribute_parts" in result:
            rows.update({f"attribute: {part}": r for part, r in result["attribute_parts"].items()})
    return rows


def amber_markdown(result: dict) -> str:
    """One row per dimension (+ overall, + attribute state / number / action): inference.py's numbers."""
    rows = ["| dimension | accuracy | precision | recall | F1 | questions | answered No | neither Yes nor No |",
            "|---|---|---|---|---|---|---|---|"]
    for name, r in _amber_rows(result).items():
        c = r["counts"]
        rows.append(f"| {name} | " + " | ".join(f"{r[k]:.1f}" for k in AMBER_KEYS)
                    + f" | {c['n']} | {c['answered_no']} | {c['unparsed']} |")
    prov = ['- positive class: "No"; numbers in % as `inference.py` prints them (0.001 in each denominator, '
            "one decimal)",
            f"- mode: `{result.get('mode')}`, prompt suffix: `{result.get('prompt_suffix')!r}`, "
            f"query file: `{result.get('query_file')}`",
            f"- {result['n_unparsed']} of {result['n_questions']} answers were not exactly \"Yes\" or \"No\" "
            "(wrong for the reference)"]
    return "# AMBER (discriminative)\n\n" + "\n".join(rows) + "\n\n" + "\n".join(
        prov + _skipped_line(result, "questions")) + "\n"


def plot_amber(result: dict, path: str | Path) -> Path:
    """Accuracy and F1 per dimension (the reference's %)."""
    plt = _pyplot()
    rows = _amber_rows(result)
    names = list(rows)
    fig, ax = plt.subplots(figsize=(1.4 * len(names) + 2, 3.2))
    ax.bar([i - 0.2 for i in range(len(names))], [rows[n]["accuracy"] for n in names], 0.4, label="accuracy")
    ax.bar([i + 0.2 for i in range(len(names))], [rows[n]["f1"] for n in names], 0.4, label="F1 (No positive)")
    ax.set_xticks(range(len(names)), names, rotation=20, fontsize=7)
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("AMBER discriminative", fontsize=9)
    return _save(fig, plt, path)


def plot_amber_answers(result: dict, path: str | Path) -> Path:
    """Stacked answers per dimension: "Yes", "No" and neither (a model's bias shows as a lopsided bar)."""
    plt = _pyplot()
    rows = _amber_rows(result)
    names = list(rows)
    counts = {n: rows[n]["counts"] for n in names}
    parts = {"Yes": [c["n"] - c["answered_no"] - c["unparsed"] for c in counts.values()],
             "No": [c["answered_no"] for c in counts.values()], "neither": [c["unparsed"] for c in counts.values()]}
    fig, ax = plt.subplots(figsize=(1.4 * len(names) + 2.5, 3.2))
    bottom = [0] * len(names)
    for label, vals in parts.items():
        ax.bar(names, vals, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_xticks(range(len(names)), names, rotation=20, fontsize=7)
    ax.set_ylabel("questions")
    ax.set_title("AMBER answers", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, plt, path)


def write_amber_report(out_dir: str | Path, result: dict) -> dict[str, Path]:
    """metrics.json, report.md, amber_dimensions.png and amber_answers.png under `out_dir`."""
    return write_files(out_dir, result, amber_markdown(result),
                       {"dimensions_plot": (plot_amber, "amber_dimensions.png"),
                        "answers_plot": (plot_amber_answers, "amber_answers.png")})


def eventhallusion_markdown(result: dict) -> str:
    """One row per split (+ overall): QA accuracy in %, counts, answers eval.py could not read."""
    rows = ["| split | accuracy | correct | questions | not matching |", "|---|---|---|---|---|"]
    for split, r in result["splits"].items():
        rows.append(f"| {split} | {100 * r['accuracy']:.2f} | {r['correct']} | {r['n']} | {r['not_matching']} |")
    rows.append(f"| **overall** | {100 * result['accuracy']:.2f} | {result['correct']} | {result['n']} | "
                f"{round(result['not_matching_rate'] * result['n'])} |")
    prov = [f"- mode: `{result.get('mode')}`, prompt suffix: `{result.get('prompt_suffix')!r}`",
            f"- question files: {', '.join(f'`{f}`' for f in result.get('question_files', []))}"]
    if "description_accuracy" in result:
        prov.append(f"- description accuracy (GPT judgements): {100 * result['description_accuracy']:.2f}")
    return "# EventHallusion\n\n" + "\n".join(rows) + "\n\n" + "\n".join(
        prov + _skipped_line(result, "questions")) + "\n"


def plot_eventhallusion(result: dict, path: str | Path) -> Path:
    """Accuracy and the share of unreadable ("not matching") answers per split and overall."""
    plt = _pyplot()
    rows = {**result["splits"], "overall": {"accuracy": result["accuracy"], "n": result["n"],
                                            "not_matching": result["not_matching_rate"] * result["n"]}}
    names = list(rows)
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2, 3.2))
    ax.bar([i - 0.2 for i in range(len(names))], [rows[n]["accuracy"] for n in names], 0.4, label="accuracy")
    ax.bar([i + 0.2 for i in range(len(names))], [rows[n]["not_matching"] / rows[n]["n"] for n in names], 0.4,
           label="not matching")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_title("EventHallusion QA accuracy per split", fontsize=9)
    return _save(fig, plt, path)


def write_eventhallusion_report(out_dir: str | Path, result: dict) -> dict[str, Path]:
    """metrics.json, report.md and eventhallusion.png under `out_dir`."""
    return write_files(out_dir, result, eventhallusion_markdown(result),
                       {"plot": (plot_eventhallusion, "eventhallusion.png")})


HB_KEYS = ("qAcc", "fAcc", "aAcc")


def hallusionbench_markdown(result: dict) -> str:
    """One row overall, per category and per subcategory: question pair, figure and all accuracy in %, counts."""
    rows = ["| questions of | qAcc (pairs) | fAcc (figures) | aAcc (all) | questions | pairs | figures |",
            "|---|---|---|---|---|---|---|"]

    def row(name: str, r: dict) -> str:
        return (f"| {name} | " + " | ".join(f"{100 * r[k]:.2f}" for k in HB_KEYS)
                + f" | {r['n_questions']} | {r['n_question_pairs']} | {r['n_figures']} |")

    rows.append(row("**all**", result))
    rows += [row(name, r) for name, r in {**result["categories"], **result["subcategories"]}.items()]
    prov = [f"- answer rule: `{result.get('parser')}` (keyword rules; the official evaluation's GPT-4 judge is not "
            "run), mode: `{}`, prompt suffix: `{!r}`".format(result.get("mode"), result.get("prompt_suffix")),
            f"- question file: `{result.get('question_file')}`; not asked (no image, as lmms-eval and VLMEvalKit): "
            f"{result.get('n_not_asked_no_image', 0)}; answers neither yes nor no: {result['n_unknown']}"]
    return "# HallusionBench\n\n" + "\n".join(rows) + "\n\n" + "\n".join(
        prov + _skipped_line(result, "questions")) + "\n"


def plot_hallusionbench(result: dict, path: str | Path) -> Path:
    """qAcc, fAcc and aAcc overall and per category, in %."""
    plt = _pyplot()
    rows = {"all": result, **result["categories"]}
    names = list(rows)
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2, 3.2))
    for j, key in enumerate(HB_KEYS):
        ax.bar([i + (j - 1) * 0.27 for i in range(len(names))], [100 * rows[n][key] for n in names], 0.27, label=key)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, 100)
    ax.set_ylabel("%")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title("HallusionBench", fontsize=9)
    return _save(fig, plt, path)


def write_hallusionbench_report(out_dir: str | Path, result: dict) -> dict[str, Path]:
    """metrics.json, report.md and hallusionbench.png under `out_dir`."""
    return write_files(out_dir, result, hallusionbench_markdown(result),
                       {"plot": (plot_hallusionbench, "hallusionbench.png")})
