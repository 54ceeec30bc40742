"""Resumable predictions, shared by every model runner (POPE, VideoHallucer, CHAIR, AMBER, EventHallusion,
HallusionBench).

A run's folder holds predictions.jsonl, one row per answered question, appended as each batch ends (a killed
run loses at most one batch), and run.json, the settings the answers were made under, with a fingerprint of
the weight and adapter files: a rerun with other settings (e.g. a retrained adapter) is refused instead of
mixing two models' answers. A rerun answers only the questions predictions.jsonl lacks.

Under N processes (`mmpo/eval/sharding.py`) each rank answers its share of the unanswered questions into its own
`predictions.rank{r}.jsonl`, and the main rank gathers them into predictions.jsonl in question order; run.json
then records `world_size` and each rank's `shares` (the questions it answered in that call).

Unreadable media (`on_bad_media`): `error` (default) stops the run at the first missing or undecodable file
(answers so far are kept for the rerun); `skip` leaves out the questions on such files, and the runner scores
the rest and names the files under "skipped_media" in metrics.json. Scores with skips do not compare with
published numbers over the full files.
"""

from __future__ import annotations

import json
from pathlib import Path

from mmpo.eval import files, sharding
from mmpo.eval.answering import Item, answer_items
from mmpo.media import MediaError
from mmpo.models import load_model
from mmpo.models.loading import weights_fingerprint
from mmpo.records import jsonl_lines

BAD_MEDIA = ("error", "skip")  # on_bad_media values, see the module docstring
PER_CALL = ("world_size", "shares")  # run.json entries about how a call ran, not what it answers with


def model_settings(model_cfg) -> dict:
    """The run.json entries that identify the model: paths and a fingerprint of the weight and adapter files."""
    return {"model": model_cfg.path, "adapter": model_cfg.adapter, "weights": weights_fingerprint(model_cfg)}


def check_run(out: Path, settings: dict) -> None:
    """run.json records the settings; resuming predictions made under other settings would mix them."""
    path = out / "run.json"
    if path.exists() and ((out / "predictions.jsonl").exists() or rank_files(out / "predictions.jsonl")):
        try:
            old = files.load_json(path)
        except ValueError as e:  # the settings the predictions were made under are unknown: mixing is unsafe
            raise ValueError(f"{e}; run.json records the settings predictions.jsonl was made under: restore it, "
                             "or delete both to start the run anew") from None
        if not isinstance(old, dict):
            raise ValueError(f"{path}:1: expected a JSON object of settings, got a JSON {files.json_type(old)}; "
                             "restore it, or delete it and predictions.jsonl to start the run anew")
        old = {k: v for k, v in old.items() if k not in PER_CALL}
        if old != settings:
            diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise ValueError(f"{out}: existing predictions were made with other settings ({diff}); "
                             "use another out_dir or delete predictions.jsonl")
    sharding.barrier()  # every rank has compared before the main one rewrites the file
    if sharding.rank_world()[0] == 0:
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings, indent=2) + "\n")


def rank_files(pred_path: Path) -> list[Path]:
    """The per-rank predictions of an unfinished N-process call (`predictions.rank{r}.jsonl`)."""
    return sorted(pred_path.parent.glob(f"{pred_path.stem}.rank*.jsonl"))


def load_predictions(path: Path, key_fields: tuple[str, ...], repair: bool = True) -> dict[tuple, dict]:
    """Rows of predictions.jsonl by key; a torn last line (killed mid-write) is dropped and (`repair`) the file fixed.
    """
    if not path.exists():
        return {}
    rows, good = {}, []
    lines = jsonl_lines(files.read_text(path))
    for n, line in enumerate(lines, 1):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if n == len(lines):
                break
            raise ValueError(f"{path}:{n}: invalid JSON: {e.msg} (column {e.colno})") from None
        missing = [k for k in (*key_fields, "answer") if not isinstance(rec, dict) or k not in rec]
        if missing:
            raise ValueError(f"{path}:{n}: fields {missing} missing (a row holds {list(key_fields)} and 'answer')")
        rows[tuple(str(rec[k]) for k in key_fields)] = rec
        good.append(line)
    if repair and len(good) != len(lines):
        path.write_text("".join(g + "\n" for g in good), encoding="utf-8")
    return rows


def stored_answers(path: Path, key_fields: tuple[str, ...]) -> dict[tuple, tuple]:
    """{key: (answer, margin | None)} of the rows already in predictions.jsonl and in any rank's file.

    Only the main rank repairs predictions.jsonl; a rank file is repaired by its own rank before it appends.
    """
    rows = load_predictions(path, key_fields, repair=sharding.rank_world()[0] == 0)
    for part in rank_files(path):
        rows.update(load_predictions(part, key_fields, repair=False))
    return {k: (r["answer"], r.get("margin")) for k, r in rows.items()}


def append_rows(path: Path, rows: list[dict]) -> None:
    with path.open("a", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        f.flush()


def write_rows(path: Path, rows: list[dict]) -> Path:
    """A JSONL file of `rows`, replacing any old one (the reference answer files a run writes at its end)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def by_media(items: list[Item]) -> list[Item]:
    """Items sorted by media file (first-seen order kept), so a batch shares images and loads each once."""
    order = {m: i for i, m in reversed(list(enumerate(it.media for it in items)))}
    return sorted(items, key=lambda it: order[it.media])


def answer(cfg, model, processor, items: list[Item], media_type: str, load_fn, on_batch=None) -> tuple[dict, dict]:
    """`answer_items` with the config's settings; returns (answers, unreadable files {path: error}).

    With `on_bad_media: error` the first unreadable file raises, its message pointing to the skip option.
    """
    bad: dict | None = {} if cfg.on_bad_media == "skip" else None
    try:
        answers = answer_items(model, processor, items, media_type, load_fn, mode=cfg.mode, batch_size=cfg.batch_size,
                               max_new_tokens=cfg.max_new_tokens, prefix_reuse=cfg.prefix_reuse, on_batch=on_batch,
                               bad_media=bad)
    except MediaError as exc:
        raise MediaError(f"{exc} (on_bad_media: skip leaves out the questions on unreadable files)") from exc
    return answers, bad or {}


def answer_missing(cfg, pred_path: Path, key_fields: tuple[str, ...], items: list[Item], media_type: str, load_fn,
                   model=None, processor=None, logits_answer=None) -> tuple[dict, dict]:
    """Answer `items` (the questions predictions.jsonl lacks), appending a row per answer as each batch ends.

    Args:
        cfg: a runner config (model, mode, batch_size, max_new_tokens, prefix_reuse, on_bad_media).
        pred_path: predictions.jsonl; each row holds the key's fields, "answer" and, in logits mode, "margin".
        key_fields: names of the item key's parts, in order.
        items: questions to answer.
        media_type: "image" or "video".
        load_fn: path -> media.
        model: an already-loaded model, else `load_model(cfg.model)` (only when there is something to answer).
        processor: its processor.
        logits_answer: margin -> the answer string the benchmark's scorer reads (AMBER: exactly "Yes" / "No");
            default: answering's "yes" / "no".

    Returns:
        ({key: (answer, margin | None)}, {unreadable file: error}) for this call's items.
    """
    rank, world = sharding.rank_world()
    sharding.barrier()  # every rank has read the stored answers (the same `items`) before any rank appends
    part = [items[i] for i in sharding.share(len(items), rank, world)]
    own = pred_path if world == 1 else pred_path.with_name(f"{pred_path.stem}.rank{rank}.jsonl")
    if world > 1:
        load_predictions(own, key_fields)  # drops a torn last line left by a killed run before appending
    answers: dict = {}
    bad: dict = {}
    if part:
        if model is None:
            model, processor = load_model(cfg.model)

        def write(rows):
            rows = [(k, logits_answer(m) if logits_answer and m is not None else a, m) for k, a, m in rows]
            answers.update({k: (a, m) for k, a, m in rows})
            append_rows(own, [_row(key_fields, k, a, m) for k, a, m in rows])

        _, bad = answer(cfg, model, processor, part, media_type, load_fn, on_batch=write)
    parts = sharding.gather((answers, bad))
    if rank != 0:
        raise sharding.NotMainRank()
    for got, unreadable in parts[1:]:
        answers.update(got)
        bad.update(unreadable)
    _finish_call(pred_path, key_fields, items, answers, [len(sharding.share(len(items), r, world)) for r in range(world)],
                 world)
    return answers, bad


def _row(key_fields: tuple[str, ...], key: tuple, answer_text: str, margin) -> dict:
    return {**dict(zip(key_fields, key)), "answer": answer_text, **({"margin": margin} if margin is not None else {})}


def _finish_call(pred_path: Path, key_fields: tuple[str, ...], items: list[Item], answers: dict, shares: list[int],
                 world: int) -> None:
    """Main rank: rank files -> predictions.jsonl (earlier calls' rows, then this call's in question order); run.json
    records the world size and each rank's share."""
    parts = rank_files(pred_path)
    if parts:
        known = set(load_predictions(pred_path, key_fields, repair=False))
        earlier = {}
        for part in parts:
            earlier.update(load_predictions(part, key_fields, repair=False))
        new = [_row(key_fields, it.key, *answers[it.key]) for it in items if it.key in answers] if world > 1 else []
        this_call = {it.key for it in items} if world > 1 else set()
        append_rows(pred_path, [r for k, r in earlier.items() if k not in known and k not in this_call] + new)
        for part in parts:
            part.unlink()
    run_json = pred_path.parent / "run.json"
    if run_json.is_file():
        settings = json.loads(run_json.read_text())
        run_json.write_text(json.dumps({**settings, "world_size": world, "shares": shares}, indent=2) + "\n")


def skipped_summary(bad: dict, n_left_out: int, unit: str) -> dict:
    """metrics.json's "skipped_media": how many `unit`s were left out, and the unreadable files with their errors."""
    return {f"n_{unit}": n_left_out, "n_files": len(bad), "files": dict(sorted(bad.items()))}
