"""The `mmpo` command line: build, train, eval, demo, validate, make-model, make-data.

This is the only module of the core that composes `data_builders` and `eval` (lazily, inside the
command functions), so the core stays importable without them. Errors print as one line
(`mmpo: error: ...`) unless `--debug` is given.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no model hub is reachable; fail fast instead of retrying
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _train_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="training YAML (see configs/train/)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. lr=1e-5 model.path=DIR")


def check_train_command(cfg) -> None:
    """What `mmpo train` needs beyond the schema (`mmpo validate` checks it too): an evaluation for eval_every.

    (Python callers may pass their own `eval_hook` to `train`, so the schema itself cannot require eval_config.)
    """
    if cfg.eval_every and not cfg.eval_config:
        raise ValueError("eval_every needs something to evaluate: set eval_config to a POPE eval YAML")


def check_input_files(cfg) -> None:
    """The data files the config names exist, checked before any model loads (a typo then costs a second, not
    the model's load time, and leaves no run folder behind)."""
    files = {"data.train": cfg.data.train, "distill.mimic_data": cfg.distill.mimic_data,
             "distill.preference_data": cfg.distill.preference_data, "eval_config": cfg.eval_config}
    for key, path in files.items():
        if path and not Path(path).is_file():
            raise FileNotFoundError(f"{key}: no such file {path!r}")


def cmd_train(args) -> int:
    """Train with the stage the config names (sft, dpo, multi_round, distill)."""
    from mmpo.config import TrainConfig, load

    cfg = load(TrainConfig, args.config, args.overrides)
    check_train_command(cfg)
    check_input_files(cfg)
    hook = None
    if cfg.eval_config:  # the periodic evaluation: POPE on `limit` questions per split, into metrics.jsonl
        from eval.runner import PopeEvalConfig, make_pope_hook

        eval_cfg = load(PopeEvalConfig, cfg.eval_config)
        from mmpo.distributed import will_shard

        if will_shard(cfg.parallel) and eval_cfg.mode == "generate":
            # every rank runs the hook under FSDP2, and ranks that stop generating at different lengths would
            # wait for each other forever; logits mode runs the same forwards everywhere
            raise ValueError(f"{cfg.eval_config}: under FSDP the periodic evaluation runs in logits mode (mode=logits)")
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
    print(f"run directory: {out}")
    return 0


def _build_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="builder: augment | self_qa | difficulty")
    p.add_argument("--config", help="builder YAML (see configs/build/)")
    p.add_argument("overrides", nargs="*", help="key=value overrides")


def cmd_build(args) -> int:
    """Build a preference set from raw media with one of the BUILDERS."""
    from data_builders import BUILDERS
    from mmpo.config import load

    if args.name not in BUILDERS:
        raise ValueError(f"unknown builder {args.name!r}; choose from {sorted(BUILDERS)}")
    config_cls, build = BUILDERS[args.name]
    out = build(load(config_cls, args.config, args.overrides))
    print(f"pairs written to {out}")
    return 0


def _eval_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("benchmark", help="pope | videohallucer | chair | amber | eventhallusion | pope-build")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="the benchmark's own flags (--help for them)")


def cmd_eval(args) -> int:
    """Evaluate a model, or score an existing answers file, on POPE / VideoHallucer / CHAIR / AMBER / EventHallusion."""
    from eval import EVALUATORS

    if args.benchmark not in EVALUATORS:
        raise ValueError(f"unknown benchmark {args.benchmark!r}; choose from {sorted(EVALUATORS)}")
    return EVALUATORS[args.benchmark].command(args.rest)


def _demo_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="outputs/demo", help="output folder (report.md, plots, runs)")
    p.add_argument("--from-scratch", action="store_true", help="retrain the world models instead of the shipped ones")
    p.add_argument("--quick", action="store_true", help="a reduced demo (the end-to-end test)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per method (the report gives mean and std)")
    p.add_argument("--methods", default="", help="image methods, comma-separated (default DPO,DA-DPO,Caption-DPO; also mDPO)")
    p.add_argument("--no-video", action="store_true", help="skip the video part (PaMi-VDPO on VideoHallucer-style pairs)")


def cmd_demo(args) -> int:
    """The whole build -> train -> evaluate loop on the built-in synthetic world."""
    from demo import pipeline

    pipeline.run(Path(args.out), quick=args.quick, from_scratch=args.from_scratch, seeds=args.seeds, video=not args.no_video,
                 methods=tuple(m for m in args.methods.split(",") if m) or None)
    return 0


def _validate_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", help="config YAML files (configs/train|build|eval/...)")


def config_class_for(path: Path):
    """The config dataclass a YAML file is checked against, by its folder (train / build / eval) and name."""
    kind = path.parent.name
    if kind == "build":
        from data_builders import BUILDERS

        name = path.stem.split("_")[0] if path.stem.split("_")[0] in BUILDERS else "_".join(path.stem.split("_")[:2])
        if name not in BUILDERS:
            raise ValueError(f"{path}: cannot tell which builder this config is for (name it <builder>_*.yaml)")
        return BUILDERS[name][0]
    if kind == "eval":
        from eval import EVALUATORS

        # <benchmark>.yaml or <benchmark>_*.yaml, e.g. pope_logits.yaml
        runnable = [n for n, e in EVALUATORS.items() if e.config is not None]
        name = next((n for n in runnable if path.stem == n or path.stem.startswith(n + "_")), None)
        if name is None:
            raise ValueError(f"{path}: cannot tell which benchmark this config is for (name it <benchmark>_*.yaml, "
                             f"benchmark in {runnable})")
        return EVALUATORS[name].config
    from mmpo.config import TrainConfig

    return TrainConfig


def cmd_validate(args) -> int:
    """Check config files against their typed schema (unknown keys and wrong types are errors).

    Every file is checked, also after a bad one, so one run lists all that need fixing; exit 1 if any does.
    """
    from mmpo.config import TrainConfig, load

    failed = 0
    for raw in args.paths:
        path = Path(raw)
        try:
            cfg = load(config_class_for(path), path)
            if isinstance(cfg, TrainConfig):
                check_train_command(cfg)
        except Exception as exc:  # the file's own problem: report it and go on to the next file
            if args.debug:
                raise
            print(f"mmpo: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"ok  {path}")
    if failed:
        print(f"mmpo: {failed} of {len(args.paths)} config file(s) failed", file=sys.stderr)
    return 1 if failed else 0


def _make_model_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--family", required=True, help="llava | llava_next | llava_next_video | video_llava | "
                   "llava_onevision | qwen2_vl | qwen2_5_vl | qwen3_vl | smolvlm (7b: LLaVA families, qwen2_5_vl)")
    p.add_argument("--size", default="tiny", choices=["tiny", "7b"])
    p.add_argument("--out", required=True, help="folder to write the checkpoint into")


def cmd_make_model(args) -> int:
    """Write an offline random-init checkpoint (tiny for tests, 7B-shaped config for GPU benchmarks)."""
    from mmpo.models import make_model_main

    make_model_main(args.family, args.size, args.out)
    return 0


def _make_data_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="folder to write the example data into")
    p.add_argument("--seed", type=int, default=0, help="world seed")


def cmd_make_data(args) -> int:
    """Write a small example data set (images, videos, SFT records, pairs, COCO annotations) to try mmpo on."""
    from demo.pairs import write_example_data

    info = write_example_data(args.out, seed=args.seed)
    counts = ", ".join(f"{k} {v}" for k, v in info["counts"].items())
    print(f"wrote example data to {args.out}: {counts}; pairs in {info['pairs']['answers']}")
    return 0


COMMANDS = {  # name -> (function, argument setup)
    "build": (cmd_build, _build_parser),
    "train": (cmd_train, _train_parser),
    "eval": (cmd_eval, _eval_parser),
    "demo": (cmd_demo, _demo_parser),
    "validate": (cmd_validate, _validate_parser),
    "make-model": (cmd_make_model, _make_model_parser),
    "make-data": (cmd_make_data, _make_data_parser),
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


OWN_LOGGERS = ("mmpo", "data_builders", "eval")


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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    show_progress_messages()
    quiet_known_noise()
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("mmpo: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one clear line for the user; --debug for the traceback
        if args.debug:
            raise
        print(f"mmpo: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
