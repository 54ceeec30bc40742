"""Model cards: the README.md of every adapter / model folder a run saves, in the Hugging Face model-card format.

A folder that is uploaded as is (`hf upload USER/NAME runs/x/adapter`) should say what it is: YAML front matter
the Hub reads (`base_model`, `library_name: peft`, `tags`, `datasets` where the data's manifest names them) and
a body with the method and its losses (each with its paper, from the loss class's docstring), the
hyperparameters, the data (file, manifest counts and skips), evaluation results (the run's `eval_every` rows,
and any `mmpo eval ... model.adapter=X` appends later) and how to load it. `huggingface_hub.ModelCard` writes
and parses it, so the Hub reads it the same way.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from mmpo.records import MANIFEST_FILE

EVAL_HEADING = "## Evaluation results"
NO_RESULTS = "_No evaluation yet: `mmpo eval NAME --config F model.adapter=THIS_FOLDER` appends its results here._"


def data_facts(train_path: str | Path, n_records: int, n_invalid: int) -> dict:
    """What a run trained on: the file, usable records, lines skipped on read, and its manifest's counts and skips.

    Args:
        train_path: the pair (or SFT) JSONL.
        n_records: records read.
        n_invalid: lines skipped as invalid while reading (`on_bad_record: skip`).
    """
    train_path = Path(train_path)
    facts = {"file": str(train_path), "records": n_records, "invalid_lines_skipped": n_invalid}
    manifest = train_path.parent / MANIFEST_FILE
    if manifest.is_file():
        try:
            body = json.loads(manifest.read_text())
        except json.JSONDecodeError:
            return facts
        skipped = body.get("skipped") or []
        reasons: dict[str, int] = {}
        for item in skipped:
            reason = str(item.get("reason", "unknown")) if isinstance(item, dict) else "unknown"
            reasons[reason] = reasons.get(reason, 0) + 1
        facts["manifest"] = {"counts": body.get("counts", {}), "skipped": len(skipped), "skipped_by_reason": reasons,
                             "builder": (body.get("config") or {}).get("builder", body.get("builder", "")),
                             "seed": body.get("seed"), "mmpo_version": body.get("mmpo_version"),
                             "source": body.get("source", ""), "format": body.get("format", "")}  # data convert
        datasets = body.get("datasets") or (body.get("config") or {}).get("datasets")
        if datasets:
            facts["datasets"] = [datasets] if isinstance(datasets, str) else list(datasets)
    return facts


def base_model_id(path: str) -> str:
    """The base model's Hub id when the local checkpoint records one (config.json `_name_or_path`), else `path`."""
    config = Path(path) / "config.json"
    if config.is_file():
        try:
            name = json.loads(config.read_text()).get("_name_or_path", "")
        except json.JSONDecodeError:
            name = ""
        if re.fullmatch(r"[\w.-]+/[\w.-]+", name or "") and not Path(name).exists():
            return name
    return path


def loss_citation(name: str) -> str:
    """The first paragraph of the loss class's docstring: its name, paper and equation."""
    from mmpo.losses import LOSSES

    doc = (LOSSES[name].__doc__ or name).strip().split("\n\n")[0]
    return " ".join(doc.split())


def _method_lines(cfg, method: str) -> list[str]:
    """What was trained: `method` (a schedule's words) first, then the loss terms the stage trained, if any."""
    lines = [f"- {method}"] if method else []
    if cfg.stage == "sft":
        return lines or ["- Stage `sft`: token-averaged negative log-likelihood of the answer (prompt and media masked)."]
    if not cfg.loss:
        return lines
    lines.append(f"- {'The' if method else f'Stage `{cfg.stage}`; the'} loss is the weighted sum of these terms:")
    for term in cfg.loss:
        params = ", ".join(f"{k}={v}" for k, v in term.params.items()) or "defaults"
        lines.append(f"  - `{term.name}` × {term.weight} ({params}): {loss_citation(term.name)}")
    return lines


def _hyperparameters(cfg, summary: dict) -> list[str]:
    rows = {"learning rate": cfg.lr, "schedule": f"linear warm-up ({cfg.warmup_ratio}) + cosine",
            "steps": summary.get("steps"), "batch size (per process)": cfg.batch_size,
            "gradient accumulation": cfg.grad_accum, "processes": summary.get("processes", 1),
            "optimizer": cfg.optimizer, "weight decay": cfg.weight_decay, "max grad norm": cfg.max_grad_norm,
            "precision": cfg.precision, "seed": cfg.seed, "frames per video": cfg.model.num_frames}
    if cfg.lora.enabled:
        rows.update({"LoRA r / alpha / dropout": f"{cfg.lora.r} / {cfg.lora.alpha} / {cfg.lora.dropout}",
                     "LoRA target modules": f"`{cfg.lora.target_modules}`"})
    # a "|" inside a cell (the target-module regex) would end the cell
    return ["| setting | value |", "|---|---|", *(f"| {k} | {str(v).replace('|', chr(92) + '|')} |" for k, v in rows.items())]


def _data_lines(data: dict, summary: dict) -> list[str]:
    lines = [f"- File: `{data.get('file', '')}`: {data.get('records', '?')} records read, "
             f"{data.get('invalid_lines_skipped', 0)} invalid lines skipped; "
             f"{summary.get('skipped_records', 0)} records skipped during training "
             f"({json.dumps(summary.get('skipped_by_reason', {}))})."]
    man = data.get("manifest")
    if man:
        made_by = (f"builder `{man['builder']}`" if man.get("builder") else
                   f"`mmpo data convert` from `{man['source']}` (format `{man.get('format')}`)" if man.get("source")
                   else "no builder named")
        lines.append(f"- Manifest (`{MANIFEST_FILE}`): {made_by}, seed {man.get('seed')}, "
                     f"counts {json.dumps(man.get('counts', {}))}, {man.get('skipped', 0)} inputs skipped "
                     f"({json.dumps(man.get('skipped_by_reason', {}))}).")
    else:
        lines.append(f"- No `{MANIFEST_FILE}` beside the file (not made by an mmpo builder).")
    return lines


def eval_table(title: str, metrics: dict, source: str = "") -> str:
    """A results subsection: one row per group of metrics (a split, a category), one column per metric.

    Rates and scores (floats) and the item count `n` are shown; other integers (confusion counts, file sizes)
    stay in the evaluation's metrics.json, which `source` names. `{"f1": .8, "splits": {"random": {"f1": .9}}}`
    gives the rows "all" (or what the metrics' `aggregation` says, e.g. "mean of splits") and "splits/random".
    """
    from mmpo.metrics import flatten

    rows: dict[str, dict[str, float | int]] = {}
    top = str(metrics.get("aggregation", "all")).replace("_", " ")  # POPE's top row: "mean of splits"
    for key, value in flatten(metrics).items():
        group, _, name = key.replace("/", ".").rpartition(".")  # metrics.jsonl names are "pope/random/f1"
        shown = isinstance(value, float) or (name == "n" and isinstance(value, int) and not isinstance(value, bool))
        if shown:
            rows.setdefault(group.replace(".", "/") or top, {})[name] = value
    columns = list(dict.fromkeys(name for row in rows.values() for name in row))
    lines = [f"| | {' | '.join(columns)} |", "|---" * (len(columns) + 1) + "|"]
    for group, row in rows.items():
        cells = (f"{row[c]:.4f}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in columns)
        lines.append(f"| {group} | {' | '.join(cells)} |")
    settings = ", ".join(f"{k} {metrics[k]}" for k in ("mode", "parser") if isinstance(metrics.get(k), str))
    # POPE's and most scorers' rates are fractions; AMBER's reference gives percent (85.3)
    unit = "Fractions, not percent" if all(abs(row[c]) <= 1 for row in rows.values() for c in row if c != "n") \
        else "As the benchmark's own scorer gives them"
    where = f"\n\n{unit + (f' ({settings})' if settings else '')}. Every number: `{source}`." if source else ""
    return f"### {title}\n\n" + "\n".join(lines) + where + "\n"


def _training_evals(run_dir: Path) -> str:
    """The `eval_every` rows of metrics.jsonl (keys `eval/...`), the last one as the card's table."""
    from mmpo.metrics import read_metrics

    rows = [r for r in read_metrics(run_dir) if any(k.startswith("eval/") for k in r)]
    if not rows:
        return NO_RESULTS + "\n"
    last = rows[-1]
    metrics = {k.removeprefix("eval/"): v for k, v in last.items() if k.startswith("eval/")}
    steps = ", ".join(str(r["step"]) for r in rows)
    return eval_table(f"During training (eval_every; step {last['step']}, evaluated at steps {steps})", metrics,
                      "the run's metrics.jsonl")


def write_model_card(folder: str | Path, cfg, summary: dict, data: dict, method: str = "") -> Path:
    """Write `folder/README.md` for a finished run (replacing PEFT's empty template).

    Args:
        folder: the saved adapter/ or model/ folder (its parent is the run folder).
        cfg: the run's TrainConfig.
        summary: the run's summary.json contents (steps, skips, processes).
        data: `data_facts` of the training data.
        method: what the run trained, in words, where its stage and loss terms do not say it (a distillation
            stage's own loss); "" = the stage and terms.

    Returns:
        The README.md path.
    """
    from huggingface_hub import ModelCard, ModelCardData

    folder = Path(folder)
    adapter = (folder / "adapter_config.json").is_file()
    base = base_model_id(cfg.model.path)
    tags = ["mmpo", "vision-language", "hallucination", cfg.stage,
            *dict.fromkeys(t.name for t in cfg.loss if cfg.stage != "sft")]
    if adapter:
        tags += ["lora", "peft"]
    meta = ModelCardData(base_model=base, library_name="peft" if adapter else "transformers", tags=tags,
                         datasets=data.get("datasets") or None, pipeline_tag="image-text-to-text")
    run_name = cfg.run_name or Path(cfg.output_dir).name
    load = (f"from peft import PeftModel\nfrom transformers import AutoModelForImageTextToText, AutoProcessor\n\n"
            f"base = AutoModelForImageTextToText.from_pretrained(\"{base}\")\n"
            f"model = PeftModel.from_pretrained(base, \"THIS_FOLDER_OR_REPO\")\n"
            f"processor = AutoProcessor.from_pretrained(\"THIS_FOLDER_OR_REPO\")" if adapter else
            "from transformers import AutoModelForImageTextToText, AutoProcessor\n\n"
            "model = AutoModelForImageTextToText.from_pretrained(\"THIS_FOLDER_OR_REPO\")\n"
            "processor = AutoProcessor.from_pretrained(\"THIS_FOLDER_OR_REPO\")")
    body = "\n".join([
        f"# {run_name}", "",
        f"{'A LoRA adapter' if adapter else 'A fine-tuned model'} for `{base}`, trained with mmpo (preference "
        "optimisation that makes image and video language models hallucinate less).", "",
        "## Method", "", *_method_lines(cfg, method), "",
        "## Hyperparameters", "", *_hyperparameters(cfg, summary), "",
        "## Data", "", *_data_lines(data, summary), "",
        "## How to load", "", "```python", load, "```", "",
        "With mmpo: `mmpo eval pope --config configs/eval/pope_generate.yaml "
        f"{f'model.path={cfg.model.path} model.adapter=THIS_FOLDER' if adapter else 'model.path=THIS_FOLDER'}`. "
        "Upload: `hf upload USER/NAME THIS_FOLDER`.", "",
        EVAL_HEADING, "", _training_evals(folder.parent)])
    card = ModelCard(f"---\n{meta.to_yaml()}\n---\n\n{body}")
    path = folder / "README.md"
    card.save(path)
    return path


def append_eval_results(folder: str | Path, benchmark: str, metrics: dict, out_dir: str | Path) -> Path | None:
    """Add an `mmpo eval` run's results to the card of the adapter/model folder it evaluated (None: no mmpo card).

    Args:
        folder: the adapter (or model) folder that holds README.md.
        benchmark: the evaluator's name (pope, videohallucer, ...).
        metrics: what the runner returned (metrics.json).
        out_dir: the evaluation's folder (named in the card).
    """
    from huggingface_hub import ModelCard

    path = Path(folder) / "README.md"
    if not path.is_file():
        return None
    card = ModelCard.load(path)
    if "mmpo" not in (card.data.tags or []):  # a base model's own card is not ours to edit
        return None
    text = card.content.replace(NO_RESULTS + "\n", "")
    title = f"### mmpo eval {benchmark} ({out_dir})"
    if title in text:  # the same evaluation again (rescored, resumed): its section is replaced, not repeated
        start = text.index(title)
        end = text.find("\n### ", start + len(title))
        text = text[:start] + (text[end + 1:] if end != -1 else "")
    section = eval_table(title.removeprefix("### "), metrics, f"{out_dir}/metrics.json")
    text = text.rstrip("\n") + "\n\n" + section if EVAL_HEADING in text else \
        text.rstrip("\n") + f"\n\n{EVAL_HEADING}\n\n{section}"
    ModelCard(text).save(path)
    return path
