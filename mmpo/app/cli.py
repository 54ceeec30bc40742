"""The `mmpo` command line: build, train, eval, demo, validate, make-model, make-data.

The top layer: it composes the core, `mmpo.builders`, `mmpo.eval` and `mmpo.demo`, importing each inside the
command that needs it so that `mmpo --help` or a config check does not load torch. Errors print as one line
(`mmpo: error: ...`) unless `--debug` is given.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no model hub is reachable; fail fast instead of retrying
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _train_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="training YAML (see configs/train/)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. lr=1e-5 model.path=DIR")


def check_train_command(cfg):
    """What `mmpo train` checks beyond the schema, run by `mmpo validate` too: eval_every needs an evaluation,
    and the evaluation's own config must load (and, under FSDP, run in logits mode).

    (Python callers may pass their own `eval_hook` to `train`, so the schema itself cannot require eval_config.)

    Returns:
        The periodic evaluation's config, or None.
    """
    from mmpo.config import ConfigError, load

    if cfg.eval_every and not cfg.eval_config:
        raise ConfigError("eval_every needs something to evaluate: set eval_config to a POPE eval YAML")
    if not cfg.eval_config or not Path(cfg.eval_config).is_file():
        return None  # a missing file is check_input_files's to name
    from mmpo.distributed import will_shard
    from mmpo.eval.pope_runner import PopeEvalConfig

    eval_cfg = load(PopeEvalConfig, cfg.eval_config)
    if will_shard(cfg.parallel) and eval_cfg.mode == "generate":
        # every rank runs the hook under FSDP2, and ranks that stop generating at different lengths would
        # wait for each other forever; logits mode runs the same forwards everywhere
        raise ConfigError(f"{cfg.eval_config}: under FSDP the periodic evaluation runs in logits mode (mode=logits)")
    return eval_cfg


def check_input_files(cfg) -> None:
    """The data files the config names exist, checked before any model loads (a typo then costs a second, not
    the model's load time, and leaves no run folder behind)."""
    files = {"data.train": cfg.data.train, "distill.mimic_data": cfg.distill.mimic_data,
             "distill.preference_data": cfg.distill.preference_data, "eval_config": cfg.eval_config}
    if cfg.data.format != "mmpo" and cfg.data.train:  # a snapshot folder or a data file in another layout
        if not Path(cfg.data.train).exists():
            raise FileNotFoundError(f"data.train.path: no such file or folder {cfg.data.train!r}")
        files.pop("data.train")
    for key, path in files.items():
        if path and not Path(path).is_file():
            raise FileNotFoundError(f"{key}: no such file {path!r}")


def cmd_train(args) -> int:
    """Train with the stage the config names (sft, dpo, multi_round, distill)."""
    from mmpo.config import TrainConfig, load

    cfg = load(TrainConfig, args.config, args.overrides)
    check_input_files(cfg)
    eval_cfg = check_train_command(cfg)
    hook = None
    if eval_cfg is not None:  # the periodic evaluation: POPE on `limit` questions per split, into metrics.jsonl
        from mmpo.eval.pope_runner import make_pope_hook

        hook = make_pope_hook(eval_cfg)
    if cfg.stage in ("sft", "dpo"):
        from mmpo.trainer import train

        out = train(cfg, eval_hook=hook)
    elif cfg.stage == "multi_round":
        from mmpo.multi_round import run_multi_round

        out = run_multi_round(cfg, eval_hook=hook)
    else:
        from mmpo.distill import run_distill

        out = run_distill(cfg, eval_hook=hook)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():  # without this, gloo runs sometimes abort at exit
        dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:  # one line per run, not one per process
        print(f"run directory: {out}")
    return 0


def _build_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="builder: augment | self_qa | difficulty")
    p.add_argument("--config", help="builder YAML (see configs/build/)")
    p.add_argument("overrides", nargs="*", help="key=value overrides")


def cmd_build(args) -> int:
    """Build a preference set from raw media with one of the BUILDERS."""
    from mmpo.builders import BUILDERS
    from mmpo.config import load

    if args.name not in BUILDERS:
        raise ValueError(f"unknown builder {args.name!r}; choose from {sorted(BUILDERS)}")
    from mmpo.builders.summary import empty_reason, summary_line
    from mmpo.records import read_manifest

    config_cls, build = BUILDERS[args.name]
    out = build(load(config_cls, args.config, args.overrides))
    manifest = read_manifest(out)
    print(f"{args.name}: {summary_line(manifest)}; written to {out}")
    reason = empty_reason(manifest)
    if reason:
        raise ValueError(f"{args.name} wrote no pair to {out}: {reason}")
    return 0


def _eval_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("benchmark", help="pope | videohallucer | chair | amber | eventhallusion | hallusionbench | pope-build")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="the benchmark's own flags (--help for them)")


def cmd_eval(args) -> int:
    """Evaluate a model, or score an answers file: POPE, VideoHallucer, CHAIR, AMBER, EventHallusion, HallusionBench."""
    from mmpo.eval import EVALUATORS
    from mmpo.eval.cli import main

    if args.benchmark not in EVALUATORS:
        raise ValueError(f"unknown benchmark {args.benchmark!r}; choose from {sorted(EVALUATORS)}")
    return main(args.benchmark, args.rest)


def _demo_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="outputs/demo", help="output folder (report.md, plots, runs)")
    p.add_argument("--from-scratch", action="store_true", help="retrain the world models instead of the shipped ones")
    p.add_argument("--quick", action="store_true", help="a reduced demo (the end-to-end test)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per method (the report gives mean and std)")
    p.add_argument("--methods", default="", help="image methods, comma-separated (default DPO,DA-DPO,Caption-DPO; also mDPO)")
    p.add_argument("--no-video", action="store_true", help="skip the video part (PaMi-VDPO on VideoHallucer-style pairs)")


def cmd_demo(args) -> int:
    """The whole build -> train -> evaluate loop on the built-in synthetic world."""
    from mmpo.demo import pipeline

    pipeline.run(Path(args.out), quick=args.quick, from_scratch=args.from_scratch, seeds=args.seeds, video=not args.no_video,
                 methods=tuple(m for m in args.methods.split(",") if m) or None)
    return 0


def _validate_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", help="config YAML files (configs/train|build|eval/...)")


# the command a config's first line shows (`# mmpo eval pope --config ...`, as every shipped config starts)
CONFIG_HEADER = re.compile(r"#.*\bmmpo\s+(?:(train)|build\s+(\w+)|eval\s+([\w-]+))\b")


def config_class_for(path: Path):
    """The config dataclass a YAML file is checked against: by the command on its first line, else by its folder
    (train / build / eval) and name (<builder>_*.yaml, <benchmark>_*.yaml)."""
    header = CONFIG_HEADER.match(path.read_text(encoding="utf-8").split("\n", 1)[0]) if path.is_file() else None
    kind = ("train" if header[1] else "build" if header[2] else "eval") if header else path.parent.name
    if kind == "build":
        from mmpo.builders import BUILDERS

        parts = path.stem.split("_")
        name = header[2] if header else parts[0] if parts[0] in BUILDERS else "_".join(parts[:2])
        if name not in BUILDERS:
            raise ValueError(f"{path}: cannot tell which builder this config is for (start it with a line "
                             "`# mmpo build <builder> ...`, or name it <builder>_*.yaml in a build/ folder)")
        return BUILDERS[name][0]
    if kind == "eval":
        from mmpo.eval import EVALUATORS

        runnable = [n for n, e in EVALUATORS.items() if e.config is not None]
        name = header[3] if header else next((n for n in runnable if path.stem == n or path.stem.startswith(n + "_")),
                                             None)
        if name not in runnable:
            raise ValueError(f"{path}: cannot tell which benchmark this config is for (start it with a line "
                             f"`# mmpo eval <benchmark> ...`, or name it <benchmark>_*.yaml in an eval/ folder; "
                             f"benchmark in {runnable})")
        return EVALUATORS[name].config
    from mmpo.config import TrainConfig

    return TrainConfig


def cmd_validate(args) -> int:
    """Check config files against their typed schema (unknown keys and wrong types are errors).

    The schema is the command's on the file's first line (`# mmpo eval pope --config ...`, as every shipped config
    starts), else its folder and name (configs/eval/pope_*.yaml). Every file is checked, also after a bad one, so
    one run lists all that need fixing; exit 1 if any does.
    """
    from mmpo.config import TrainConfig, load

    failed = 0
    for raw in args.paths:
        path = Path(raw)
        try:
            cfg = load(config_class_for(path), path)
            if isinstance(cfg, TrainConfig):
                check_train_command(cfg)
        except Exception as exc:  # the file's own problems (all of them): report them and go on to the next file
            if args.debug:
                raise
            print_error(exc)
            failed += 1
            continue
        print(f"ok  {path}")
    if failed:
        print(f"mmpo: {failed} of {len(args.paths)} config file(s) failed", file=sys.stderr)
    return 1 if failed else 0


def _make_model_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--family", required=True, help="llava | llava_next | llava_next_video | video_llava | "
                   "llava_onevision | qwen2_vl | qwen2_5_vl | qwen3_vl | qwen3_vl_moe | smolvlm "
                   "(7b: LLaVA families, qwen2_5_vl) | clip (open_clip, for the builders' clip_model)")
    p.add_argument("--size", default="tiny", choices=["tiny", "7b"])
    p.add_argument("--out", required=True, help="folder to write the checkpoint into")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (e.g. a distillation student "
                   "that differs from its teacher)")


def cmd_make_model(args) -> int:
    """Write an offline random-init checkpoint (tiny for tests, 7B-shaped config for GPU benchmarks), or a tiny CLIP."""
    if args.family == "clip":  # the builders' CLIP: an open_clip local-dir folder (mmpo.clip), tiny only
        if args.size != "tiny":
            raise ValueError("--family clip makes a tiny random CLIP only; README \"A CLIP checkpoint\" says where to "
                             "get a real one")
        from mmpo.clip import make_tiny_clip

        print(f"wrote a tiny random open_clip checkpoint to {make_tiny_clip(args.out)} (for clip_model=)")
        return 0
    from mmpo.models import make_model_main

    make_model_main(args.family, args.size, args.out, args.seed)
    return 0


def _make_data_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="folder to write the example data into")
    p.add_argument("--seed", type=int, default=0, help="world seed")


def cmd_make_data(args) -> int:
    """Write a small example data set (images, videos, SFT records, pairs, COCO annotations) to try mmpo on."""
    from mmpo.demo.pairs import write_example_data

    info = write_example_data(args.out, seed=args.seed)
    counts = ", ".join(f"{k} {v}" for k, v in info["counts"].items())
    print(f"wrote example data to {args.out}: {counts}; pairs in {info['pairs']['answers']}")
    return 0


def _data_parser(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True)
    convert = sub.add_parser("convert", help="a set in another layout -> mmpo pairs.jsonl (or sft.jsonl) + manifest.json")
    convert.add_argument("src", help="a snapshot folder (parquet / arrow / json / jsonl) or one data file")
    convert.add_argument("--from", dest="fmt", default="auto", help="the source's format (auto: from its columns)")
    convert.add_argument("--media-root", default="", help="folder the source's media paths are relative to "
                         "(default: its own folder)")
    convert.add_argument("--on-bad-record", default="skip", choices=["skip", "error"],
                         help="skip (count and name the row in manifest.json) or error (stop, naming the row)")
    export = sub.add_parser("export", help="mmpo pairs -> TRL / LLaMA-Factory / ms-swift files")
    export.add_argument("src", help="an mmpo pairs.jsonl")
    export.add_argument("--to", required=True, help="trl | llamafactory | swift")
    export.add_argument("--media-root", default="", help="the pairs' media root (default: as training finds it)")
    for q in (convert, export):
        q.add_argument("--out", required=True, help="output folder")
    sub.add_parser("formats", help="list the formats mmpo reads")


def cmd_data(args) -> int:
    """Convert preference / SFT sets from other layouts (RLAIF-V, TRL, LLaMA-Factory, ms-swift, ...) and back."""
    from mmpo import formats
    from mmpo.records import default_media_root, read_manifest

    if args.action == "formats":
        for name, f in formats.FORMATS.items():
            print(f"{name:18} {f.kind:5} {f.doc}")
        return 0
    if args.action == "export":
        from mmpo.formats.writers import WRITERS

        if args.to not in WRITERS:
            raise ValueError(f"data export: --to one of {sorted(WRITERS)}")
        path = WRITERS[args.to](formats.read_set(args.src, "pair"), default_media_root(args.src, args.media_root), args.out)
        print(f"wrote {path}")
        return 0
    out = formats.convert(args.src, args.out, args.fmt, args.on_bad_record, media_root=args.media_root or None)
    manifest = read_manifest(args.out)
    print(f"{manifest['format']}: {manifest['counts']['records']} records from {manifest['counts']['rows']} rows "
          f"into {out} ({manifest['counts']['skipped']} skipped: {manifest['skipped_by_reason']})")
    if manifest["counts"]["records"] == 0 and manifest["counts"]["rows"] > 0:  # as a builder that wrote no pair
        print(f"mmpo: error: {out}: no record converted; first skip: {(manifest['skipped'] or ['?'])[0]}; "
              f"{_format_hint(args.src, manifest['format'])}", file=sys.stderr)
        return 1
    return 0


def _format_hint(src: str, used: str) -> str:
    """What to try when every row was skipped: the format the columns look like, if it is another one."""
    from mmpo import formats

    try:
        source = formats.open_source(src, "auto")
        found = source.format.name
    except (formats.FormatError, ValueError):
        return f"the rows do not fit --from {used}; `mmpo data formats` lists the layouts"
    if found != used:
        return f"the columns look like --from {found} (or --from auto), not --from {used}"
    return "see manifest.json's 'skipped' for every row's reason"


COMMANDS = {  # name -> (function, argument setup)
    "build": (cmd_build, _build_parser),
    "train": (cmd_train, _train_parser),
    "eval": (cmd_eval, _eval_parser),
    "demo": (cmd_demo, _demo_parser),
    "validate": (cmd_validate, _validate_parser),
    "make-model": (cmd_make_model, _make_model_parser),
    "make-data": (cmd_make_data, _make_data_parser),
    "data": (cmd_data, _data_parser),
}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmpo", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (func, setup) in COMMANDS.items():
        p = sub.add_parser(name, help=func.__doc__.splitlines()[0], description=func.__doc__)
        setup(p)
        p.set_defaults(func=func)
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse argv; `key=value` overrides may stand anywhere after the command (before or after `--config`).

    argparse fills a trailing `nargs="*"` positional from the first run of positionals only, so
    `build augment --config F key=value` would leave `key=value` unrecognised; such leftovers are
    collected here instead.
    """
    parser = make_parser()
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    return args


class _CurrentStderr(logging.StreamHandler):
    """A handler writing to whatever sys.stderr is when a message comes, not when the handler was made
    (an in-process caller, a notebook or a test harness may swap and close the stream in between)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


OWN_LOGGERS = ("mmpo",)  # every module logs under mmpo.*


class _Prefixed(logging.Formatter):
    """"mmpo: message" for mmpo's own loggers; "warning (library): message" for everything else."""

    def format(self, record: logging.LogRecord) -> str:
        own = record.name.split(".")[0] in OWN_LOGGERS
        return f"{'mmpo' if own else f'{record.levelname.lower()} ({record.name})'}: {record.getMessage()}"


def show_progress_messages() -> None:
    """mmpo's own INFO messages (length pre-flight, resume, skips) on stderr; libraries keep their levels.

    The handler sits on the root logger, so each message prints once: a library that logs through the root
    (open_clip calls logging.info) would otherwise install a second handler of its own.
    """
    root = logging.getLogger()
    if not any(isinstance(h, _CurrentStderr) for h in root.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(_Prefixed())
        root.addHandler(handler)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)


def quiet_known_noise() -> None:
    """Silence two messages every run prints that a user can do nothing about.

    bitsandbytes logs on import that it could not fetch an optional CPU kernel from the hub (mmpo is
    offline; 4-bit works without it), and peft 0.21 calls a transformers property deprecated in 5.24.
    """
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    # transformers' "Loading weights" / "Writing model shards" bars on every load and save: one local folder
    # loads in seconds, and in a piped log each redraw is a line (mmpo's own bars and loss lines say the rest)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a core dependency
        pass
    explain_fsdp_view_warning()


def explain_fsdp_view_warning() -> None:
    """torch's FSDP2 warns on every forward of every process that the wrapped PEFT model "returned a view tensor"
    (the logits slice transformers returns). mmpo reads those logits only inside the same forward (log-probs are
    taken before FSDP2's post-forward reshards the parameters) and never modifies them in place, which is what
    the warning is about (an in-place change would skip FSDP2's pre-backward gather); 2-process FSDP2 runs log the
    losses and save the adapter of the one-process run (tests/test_fsdp.py). Said once, on the main process,
    instead of 120 times in 60 steps."""
    said = []

    def once(message, category, filename, lineno, file=None, line=None):
        if int(os.environ.get("RANK", "0")) == 0 and not said:
            said.append(True)
            print("mmpo: note: torch warns that the FSDP2-wrapped model returns a view tensor; mmpo uses the logits "
                  "within the step and never changes them in place, so it does not apply (FSDP2 runs match the "
                  "one-process run: tests/test_fsdp.py); not shown again", file=sys.stderr)

    # "always" so each one reaches `show` below, which prints the note once and drops the rest
    warnings.filterwarnings("always", message=r"FSDP2-wrapped module .* returned a view tensor")
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if "returned a view tensor" in str(message) and "FSDP2" in str(message):
            return once(message, category, filename, lineno, file, line)
        return previous(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def print_error(exc: BaseException) -> None:
    """"mmpo: error: ..." on stderr, one line per problem (a ConfigError may list several)."""
    for line in str(exc).splitlines() or [type(exc).__name__]:
        print(f"mmpo: error: {line}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    show_progress_messages()
    quiet_known_noise()
    try:
        return args.func(args)
    except KeyboardInterrupt as exc:  # mmpo.trainer.Interrupted says where it saved
        said = str(exc) or ("rerunning the same command resumes from the last checkpoint, if one was saved"
                            if args.command == "train" else "rerunning the same command resumes where it stopped")
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"mmpo: interrupted: {said}", file=sys.stderr)
        return 130
    except Exception as exc:  # one clear line for the user; --debug for the traceback
        if args.debug:
            raise
        print_error(exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
