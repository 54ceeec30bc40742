"""The demo's report: `report.md` (markdown tables) and its PNG plots, from the numbers `pipeline.run` measured.

Markdown and plots are separate functions, as in `mmpo/eval/report.py`: `report_markdown` returns the text,
`write_plots` draws the figures, `write_report` does both. Every number in the tables comes from the run; the
paragraph on repeated runs quotes `benchmarks/LOG.md` / `RESULTS.md` and says so.
"""

from __future__ import annotations

import statistics
from pathlib import Path

POPE_PLOT, CURVES_PLOT, VIDEO_PLOT = "pope_f1.png", "training_curves.png", "videohallucer.png"
CHAIR_KEYS = (("chair_s", "CHAIR_s"), ("chair_i", "CHAIR_i"), ("recall", "object recall"))
PRIOR_TAGS = ("counter", "prior", "none")  # temporal pairs by their relation to the temporal prior


def image_lines(before: dict, after: dict[str, list[dict]], settings, notes: dict[str, str],
                chair: dict | None) -> list[str]:
    """The POPE table (F1 per split, adversarial yes-ratio; with `chair`, the caption columns too), the best
    method and what each method is.

    Args:
        before: the SFT model's POPE metrics {split: {f1, yes_ratio, ...}}.
        after: {method: [POPE metrics per seed]}.
        settings: the run's `DemoSettings`.
        notes: {method: one-line description}.
        chair: None, or {"SFT": CHAIR metrics, method: [CHAIR metrics per seed]} (`eval.chair.score` results).
    """
    splits = list(before)
    chair_cols = [label for _, label in CHAIR_KEYS] if chair else []
    seeds = "1 seed" if settings.seeds == 1 else f"{settings.seeds} seeds (mean ± std)"
    lines = [f"Synthetic world: {settings.world.n_images} training images, {settings.world.n_test_images} held-out "
             f"images; co-occurrence {settings.world.co_prob} in training. POPE questions built from the held-out "
             f"annotations by the reference procedure; answers by logits (yes vs no), official metrics. {seeds} "
             f"per method, {settings.steps} LoRA steps each."]
    if chair:
        n = chair["SFT"]["n_captions"]
        lines[0] += (f" Captions: \"{chair['SFT']['prompt']}\" on the first {n} held-out images, greedy; CHAIR "
                     "against the objects really drawn (the world's own object list as the vocabulary), in percent; "
                     "lower CHAIR_s / CHAIR_i is less hallucination.")
    lines += ["", "| model | " + " | ".join([f"{s} F1" for s in splits] + ["adversarial yes-ratio"] + chair_cols) + " |",
              "|---|" + "---|" * (len(splits) + 1 + len(chair_cols))]

    def chair_cells(runs: list[dict]) -> list[str]:
        return [cell([100 * r[key] for r in runs], 1) for key, _ in CHAIR_KEYS] if chair else []

    lines.append("| SFT (before) | " + " | ".join([f"{100 * before[s]['f1']:.1f}" for s in splits]
                                                  + [f"{before['adversarial']['yes_ratio']:.3f}"]
                                                  + chair_cells([chair["SFT"]] if chair else [])) + " |")
    for name, runs in after.items():
        cells = [cell([100 * r[s]["f1"] for r in runs], 1) for s in splits]
        cells.append(cell([r["adversarial"]["yes_ratio"] for r in runs]))
        lines.append(f"| {name} | " + " | ".join(cells + chair_cells(chair.get(name, []) if chair else [])) + " |")
    best = max(after, key=lambda k: statistics.fmean(r["adversarial"]["f1"] for r in after[k])) if after else None
    if best:
        gain = 100 * (statistics.fmean(r["adversarial"]["f1"] for r in after[best]) - before["adversarial"]["f1"])
        lines += ["", f"Best method on the adversarial split: **{best}** ({gain:+.1f} F1 points)."]
        for name, runs in after.items():
            delta = 100 * (statistics.fmean(r["adversarial"]["f1"] for r in runs) - before["adversarial"]["f1"])
            if delta <= 0:
                lines.append(f"- {name} did not improve POPE here ({delta:+.1f} adversarial F1 points).")
    if chair and after:
        fewest = min(after, key=lambda k: statistics.fmean(r["chair_s"] for r in chair[k]))
        gain = 100 * (statistics.fmean(r["chair_s"] for r in chair[fewest]) - chair["SFT"]["chair_s"])
        lines += ["", f"Fewest captions with a hallucinated object: **{fewest}** (CHAIR_s {gain:+.1f} points)."]
    return lines + ["", "Methods:"] + [f"- **{name}**: {notes[name]}" for name in after if name in notes]


def report_markdown(before: dict, after: dict[str, list[dict]], times: dict[str, float], settings,
                    notes: dict[str, str], video: dict | None = None, chair: dict | None = None) -> str:
    """The whole report.md text (see `image_lines` and `video_report_lines` for the tables)."""
    lines = ["# mmpo demo: hallucination before and after preference optimisation", ""]
    lines += image_lines(before, after, settings, notes, chair)
    if video:
        lines += video_report_lines(video) + ["", f"![VideoHallucer-style pair accuracy]({VIDEO_PLOT})"]
    lines += ["", "Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()), "",
              f"![POPE F1 per split]({POPE_PLOT})", "", f"![training curves]({CURVES_PLOT})"]
    return "\n".join(lines) + "\n"


def summary_lines(markdown: str) -> list[str]:
    """What `mmpo demo` prints at the end: the report's tables and verdict lines, without its prose (report.md)."""
    keep = ("|", "Best method", "Fewest captions", "## ")
    return [line for line in markdown.splitlines() if line.startswith(keep)]


def label_bars(ax, bars, digits: int = 2) -> None:
    """Each bar's value above it, so a bar of 0 reads "0.00" instead of leaving the axes looking empty."""
    ax.bar_label(bars, fmt=f"%.{digits}f", fontsize=6, padding=1)


def plot_pope(path: Path, before: dict, after: dict[str, list[dict]], plt) -> None:
    """Bars of POPE F1 per split (mean over seeds) for the SFT model and each method, on a 0-1 axis (a cut axis
    makes small differences look large), each bar labelled with its value."""
    splits = list(before)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = ["SFT"] + list(after)
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        vals = [before[s]["f1"] if name == "SFT" else statistics.fmean(r[s]["f1"] for r in after[name]) for s in splits]
        label_bars(ax, ax.bar([j + i * width for j in range(len(splits))], vals, width, label=name))
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(splits))], splits)
    ax.set_ylabel("POPE F1")
    ax.set_ylim(0, 1.1)
    ax.set_title("POPE F1 per split (tiny LLaVA after SFT, and each method's LoRA on it)", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average, debiased as tensorboard's smoothing (the first points are not pulled to 0)."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight ** i))
    return out


def plot_curves(path: Path, curves: dict[str, list[dict]], plt, video_curves: dict | None = None) -> None:
    """Training loss per step of each method's first seed, one panel per run (the losses of different methods
    are on different scales and would overlap): raw loss faint, its moving average solid; image and video runs."""
    runs = [(name, "tiny LLaVA", rows) for name, rows in curves.items()]
    runs += [(name, "tiny LLaVA-NeXT-Video", rows) for name, rows in (video_curves or {}).items()]
    runs = [r for r in runs if r[2]]
    if not runs:
        return
    cols = min(3, len(runs))
    rows_n = -(-len(runs) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.4 * cols, 2.6 * rows_n), squeeze=False)
    for ax, (name, model, rows) in zip(axes.flat, runs):
        steps, loss = [r["step"] for r in rows], [r["loss"] for r in rows]
        ax.plot(steps, loss, color="tab:blue", alpha=0.25, lw=0.8, label="loss")
        ax.plot(steps, smooth(loss), color="tab:blue", lw=1.6, label="moving average (0.9)")
        ax.set_title(f"{name} ({model})", fontsize=8)
        ax.set_xlabel("step", fontsize=7)
        ax.set_ylabel("loss", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(runs):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_plots(out: Path, before: dict, after: dict[str, list[dict]], curves: dict, video: dict | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot_pope(out / POPE_PLOT, before, after, plt)
    plot_curves(out / CURVES_PLOT, curves, plt, (video or {}).get("curves"))
    if video:
        plot_video(out / VIDEO_PLOT, video, plt)


def write_report(out: Path, before: dict, after: dict[str, list[dict]], curves: dict, times: dict[str, float],
                 settings, notes: dict[str, str], video: dict | None = None, chair: dict | None = None) -> Path:
    """report.md and the plots in `out`; returns the report's path."""
    write_plots(out, before, after, curves, video)
    path = out / "report.md"
    path.write_text(report_markdown(before, after, times, settings, notes, video, chair))
    return path


# ----------------------------------------------------------------------------- video




def video_columns(metrics: dict) -> dict[str, float]:
    """The video table's numbers for one run: pair accuracy per category, per prior tag, overall."""
    cols = {"object_relation": metrics["object_relation"]["pair_accuracy"],
            "object halluc": metrics["object_relation"]["hallucinated_accuracy"],
            "temporal": metrics["temporal"]["pair_accuracy"]}
    for tag in PRIOR_TAGS:
        if tag in metrics["temporal_by_prior"]:
            cols[f"temporal {tag}"] = metrics["temporal_by_prior"][tag]["pair_accuracy"]
    cols["overall"] = metrics["overall"]["pair_accuracy"]
    return cols


def video_report_lines(video: dict) -> list[str]:
    """The VideoHallucer-style table (pair accuracy; temporal split by the prior) and what each method did."""
    before = video_columns(video["before"])
    n_seeds = {len(runs) for runs in video["after"].values()}
    seeds = "1 seed" if n_seeds == {1} else f"{'/'.join(str(n) for n in sorted(n_seeds))} seeds, mean ± std"
    n_pairs = {t: video["before"]["temporal_by_prior"][t]["n_pairs"] for t in video["before"]["temporal_by_prior"]}
    lines = ["", "## Video: VideoHallucer-style pairs on held-out videos", "",
             "Tiny LLaVA-NeXT-Video after SFT on the world's videos, in which a co-occurring pair's first object "
             "enters first 95% of the time (the temporal prior). Held-out videos break it half the time. A pair "
             "counts when both its basic question (present object / true order) and its hallucination question "
             "(absent co-occurring partner / swapped order) are answered right (the reference hit rule). Temporal "
             f"pairs are split by the prior: **counter** (the true order breaks it; {n_pairs.get('counter', 0)} "
             f"pairs), prior ({n_pairs.get('prior', 0)}), none (not a co-occurring pair; {n_pairs.get('none', 0)}). "
             f"Methods: {seeds}, LoRA on the SFT model.", "",
             "| model | " + " | ".join(f"{k} pair" if k != "object halluc" else "object halluc acc" for k in before)
             + " |", "|---|" + "---|" * len(before),
             "| SFT (before) | " + " | ".join(f"{v:.3f}" for v in before.values()) + " |"]
    for name, runs in video["after"].items():
        cols = [video_columns(r) for r in runs]
        lines.append(f"| {name} | " + " | ".join(cell([c[k] for c in cols]) for k in before) + " |")
    lines.append("")
    for name, runs in video["after"].items():
        lines.append(f"- **{name}**: {video['notes'].get(name, '')}. " + _video_verdict(before, runs))
    if video.get("self_qa"):
        c = video["self_qa"]
        dropped = ", ".join(f"{k[8:]} {v}" for k, v in sorted(c.items()) if k.startswith("dropped_"))
        lines.append(f"- VideoSAVi's builder: {c.get('answers', 0)} sampled answers, {c.get('pairs', 0)} pairs kept "
                     f"(dropped: {dropped or 'none'}), {c.get('chosen_no', 0)} of them preferring \"no\". The "
                     "questions are the world's templates filled with the objects the model named in its own caption "
                     "(a tiny model cannot write questions); the builder's yes/no judge (\"Is this answer correct?\") "
                     "is at chance on this model, so answers are judged by the model's own probability of them.")
    lines += ["", "Not measured by this run, quoted from benchmarks/LOG.md and RESULTS.md (2026-11-28): over 3 seeds in "
              "benchmarks/demo_effect.py PaMi-VDPO + DPO raised counter-prior temporal pair accuracy by +0.114 ± 0.022 "
              "and overall pair accuracy by +0.013 ± 0.005, and a DPO control without bags raised counter-prior "
              "accuracy about as much (+0.125 ± 0.114); over 3 seeds in separate processes "
              "(benchmarks/video_probe.py) the gains were +0.288 ± 0.079 with bags and +0.111 ± 0.097 without. The "
              "same recipe and seed (0) gave 0.46 to 0.70 counter-prior accuracy in five processes (CPU float "
              "nondeterminism amplified by training), so one run is one sample of a wide distribution."]
    return lines


def _video_verdict(before: dict, runs: list[dict]) -> str:
    """Counter-prior and overall pair accuracy against the SFT model, and against twice the seed std."""
    parts = []
    for key, label in (("temporal counter", "counter-prior temporal pair accuracy"), ("overall", "overall pair accuracy")):
        if key not in before:
            continue
        vals = [video_columns(r)[key] for r in runs]
        gain = statistics.fmean(vals) - before[key]
        text = f"{label} {gain:+.3f}"
        if len(vals) > 1:
            sd = statistics.stdev(vals)
            text += f" ({'more' if abs(gain) > 2 * sd else 'not more'} than twice the seed std {sd:.3f})"
        parts.append(text)
    return "; ".join(parts) + "."


def plot_video(path: Path, video: dict, plt) -> None:
    """Bars of pair accuracy per column (mean over seeds) for the SFT model and each video method."""
    rows = [("SFT", [video["before"]])] + list(video["after"].items())
    keys = [k for k in video_columns(video["before"]) if k != "object halluc"]
    fig, ax = plt.subplots(figsize=(8, 3.4))
    width = 0.8 / len(rows)
    for i, (name, runs) in enumerate(rows):
        vals = [statistics.fmean(video_columns(r)[k] for r in runs) for k in keys]
        label_bars(ax, ax.bar([j + i * width for j in range(len(keys))], vals, width, label=name))
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(keys))], keys, fontsize=7)
    ax.set_ylabel("pair accuracy")
    ax.set_ylim(0, 1.15)
    ax.set_title("VideoHallucer-style pair accuracy (tiny LLaVA-NeXT-Video after SFT, and each method)", fontsize=9)
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- cells

def cell(values: list[float], digits: int = 3) -> str:
    """mean ± std over seeds; a single run is printed alone (its spread is unknown, not 0)."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    m, sd = _mean_std(values)
    return f"{m:.{digits}f} ± {sd:.{digits}f}"


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)
