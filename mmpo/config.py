"""Typed configs: dataclasses with one-line field docs, loaded from YAML plus `key=value` overrides.

The schema lives in code (each field's comment is its documentation); YAML files only override it.
Unknown keys and wrong types are errors that name the file and the key, so a typo never silently
falls back to a default (nanoGPT's unknown-key ValueError, litgpt's typed TrainArgs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPORT_TO = ("tensorboard", "wandb", "mlflow", "trackio", "swanlab")  # experiment trackers (mmpo.metrics)


def check_report_to(names: list[str]) -> None:
    """report_to names only trackers mmpo knows (whether each is installed is checked when a run opens them)."""
    unknown = [n for n in names if n not in REPORT_TO]
    if unknown:
        raise ConfigError(f"report_to: unknown tracker(s) {unknown}; expected some of {list(REPORT_TO)}")


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file and the key.

    It may hold several problems (`errors`, one line each), so one check lists everything that needs fixing.
    """

    def __init__(self, *messages):
        self.errors = [line for msg in messages for line in str(msg).split("\n")] or [""]
        super().__init__("\n".join(self.errors))


class Problems:
    """Collects the ConfigErrors of several checks, so a config with three mistakes reports three, not the first.

    with problems.check(): ...   # each check in its own block
    problems.raise_any()         # one ConfigError listing all of them
    """

    def __init__(self):
        self.errors: list[str] = []

    @contextlib.contextmanager
    def check(self):
        try:
            yield
        except ConfigError as exc:
            self.errors.extend(exc.errors)

    def raise_any(self) -> None:
        if self.errors:
            raise ConfigError(*self.errors)


@dataclass
class ModelConfig:
    path: str = ""  # local folder of a Hugging Face checkpoint (any LLaVA family); never a hub id download
    adapter: str = ""  # optional PEFT adapter folder loaded on top of `path`
    dtype: str = "float32"  # float32 | bfloat16 | float16
    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N
    load_in_4bit: bool = False  # NF4 via bitsandbytes, double quant, compute in bf16 on CUDA / fp32 on CPU
    trust_remote_code: bool = False  # only if the user asks for it
    attn_implementation: str = "sdpa"  # eager | sdpa | flash_attention_2
    num_frames: int = 8  # frames sampled per video for this model
    # image resolution (0 = the checkpoint's own); fewer pixels = fewer image tokens (docs/ARCHITECTURE.md)
    min_pixels: int = 0  # Qwen-VL: the fewest pixels an image is resized to (image processor size.shortest_edge)
    max_pixels: int = 0  # Qwen-VL: the most pixels an image is resized to (image processor size.longest_edge)
    image_longest_edge: int = 0  # SmolVLM/Idefics3: an image's longest side before it is cut into tiles

    def __post_init__(self):
        problems = Problems()
        with problems.check():
            check_range(self, num_frames=">= 1", min_pixels=">= 0", max_pixels=">= 0", image_longest_edge=">= 0")
        if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
            problems.errors.append(f"min_pixels ({self.min_pixels}) is above max_pixels ({self.max_pixels})")
        with problems.check():  # what mmpo.models.load_model accepts (its DTYPES), checked before any load
            check_choice(self, dtype=("float32", "bfloat16", "float16"),
                         attn_implementation=("eager", "sdpa", "flash_attention_2"))
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            problems.errors.append(f"device: expected auto | cpu | cuda | cuda:N | mps, got {self.device!r}")
        problems.raise_any()


@dataclass
class LoraConfig:
    enabled: bool = True  # train a LoRA adapter (False: full fine-tuning of the language model)
    r: int = 16  # LoRA rank
    alpha: int = 32  # LoRA alpha (scale = alpha / r)
    dropout: float = 0.0  # LoRA dropout
    # regex over module names: the language model's linear layers only (the vision tower has q/k/v too)
    target_modules: str = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    train_projector: bool = False  # also train the multimodal projector (full weights)

    def __post_init__(self):
        check_range(self, r=">= 1", alpha="> 0", dropout="[0, 1)")


def _check_type(value: Any, annotation: Any, where: str) -> Any:
    """Return `value` converted to `annotation`, or raise ConfigError naming `where`."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return from_dict(annotation, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        inner = args[0] if args else Any
        return [_check_type(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):  # .nan / .inf parse as YAML floats; no setting means them
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type, data: dict, where: str = "config") -> Any:
    """Build dataclass `cls` from a plain dict; unknown keys and wrong types raise ConfigError.

    Args:
        cls: the dataclass type.
        data: values to set; missing fields keep their defaults.
        where: prefix for error messages (file name and key path).

    Returns:
        An instance of `cls`.
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    problems = Problems()
    unknown = sorted(set(data) - names)
    if unknown:
        problems.errors.append(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(names)}")
    kwargs = {}
    for k, v in data.items():
        if k in names:
            with problems.check():
                kwargs[k] = _check_type(v, hints[k], _key_path(where, k))
    try:  # the section's own checks run too (bad keys at their defaults), so every problem is listed at once
        built = cls(**kwargs)
    except ConfigError as exc:  # a check in __post_init__ ("key: problem"): name the file and section too
        problems.errors.extend(_key_path(where, e) for e in exc.errors)
    problems.raise_any()
    return built


MAX_YAML_VALUES = 100_000  # values a config may expand to, aliases counted at every use (real configs: < 500)


def safe_load(text: str, where: str = "config") -> Any:
    """`yaml.safe_load`, refusing documents whose aliases expand past MAX_YAML_VALUES values.

    A few lines of nested aliases ("billion laughs") stand for 10^9 items; PyYAML builds them shared, but every
    copy of the config (dataclasses.asdict, the saved config.yaml, a rerun's comparison) expands them, and the
    command never finishes. The expanded size is counted on the composed node graph first (each node once), so
    such a file is refused in microseconds, naming the file.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, {}, where)
        if size > MAX_YAML_VALUES:
            raise ConfigError(f"{where}: the YAML expands to {size:,} values through its aliases (&anchor / *alias), "
                              f"more than any config needs ({MAX_YAML_VALUES:,}); refused")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _expanded_size(node: yaml.Node, sizes: dict, where: str) -> int:
    """Values under `node` with every alias expanded; `sizes` memoises by node (None while being counted)."""
    key = id(node)
    if key in sizes:
        if sizes[key] is None:
            raise ConfigError(f"{where}: a YAML alias refers to its own anchor (a recursive structure); refused")
        return sizes[key]
    sizes[key] = None
    children: list = []
    if isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    elif isinstance(node, yaml.SequenceNode):
        children = node.value
    total = 1
    for child in children:
        total += _expanded_size(child, sizes, where)
        if total > MAX_YAML_VALUES * 10:  # enough to refuse; stop counting
            break
    sizes[key] = total
    return total


def _key_path(where: str, key: str) -> str:
    """"file.yaml" + "lora" -> "file.yaml: lora"; "file.yaml: lora" + "r" -> "file.yaml: lora.r"."""
    return f"{where}.{key}" if ": " in where else f"{where}: {key}"


def check_range(cfg: Any, **rules: str) -> None:
    """Range checks in one place: `rules` maps a field to a condition on it, e.g. lr="> 0", dropout="[0, 1)".

    Conditions: "> x", ">= x", or an interval "[a, b]", "[a, b)". Raises ConfigError naming the field.
    """
    problems = Problems()
    for name, rule in rules.items():
        with problems.check():
            _check_rule(cfg, name, rule)
    problems.raise_any()


def check_choice(cfg: Any, **choices: tuple) -> None:
    """Each field's value is one of its `choices` (e.g. dtype=("float32", "bfloat16")); all misses are reported."""
    bad = [f"{name}: expected {' | '.join(map(str, valid))}, got {getattr(cfg, name)!r}"
           for name, valid in choices.items() if getattr(cfg, name) not in valid]
    if bad:
        raise ConfigError(*bad)


def _check_rule(cfg: Any, name: str, rule: str) -> None:
    """One `check_range` rule on one field."""
    value = getattr(cfg, name)
    if rule.startswith(("[", "(")):
        lo, hi = (float(v) for v in rule[1:-1].split(","))
        ok = (lo <= value if rule[0] == "[" else lo < value) and (value <= hi if rule[-1] == "]" else value < hi)
    else:
        op, bound = rule.split()
        ok = value > float(bound) if op == ">" else value >= float(bound)
    if not ok:
        raise ConfigError(f"{name}: expected {rule.replace(' ', '')}, got {value!r}")


def to_dict(cfg: Any) -> dict:
    """The config as plain nested dicts (what `save` writes)."""
    return dataclasses.asdict(cfg)


def _field_type(cls: type | None, keys: list[str]) -> Any:
    """The annotation of dotted field `keys` in dataclass `cls` (None when the path leaves the schema)."""
    for key in keys:
        if cls is None or not dataclasses.is_dataclass(cls):
            return None
        cls = typing.get_type_hints(cls).get(key)
    return cls


def _parse_override(text: str, cls: type | None = None) -> tuple[list[str], Any]:
    """`key=value` -> (dotted keys, value). The value is YAML (numbers, lists, mappings), except for a field the
    schema types as a string, which takes the text as written unless quoted (YAML would cut `runs/exp #2` at the
    `#` and turn `2024-01-01` into a date)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value (e.g. {_example_override(cls)})")
    key, raw = text.split("=", 1)
    keys = key.strip().split(".")
    quoted = len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\""  # a YAML string on purpose ("\n" escapes)
    kind = _field_type(cls, keys)
    # str | X (data.train: a path or {format, path}; loss_type: a name or a list): a YAML mapping or list is parsed
    union_with_str = typing.get_origin(kind) in (typing.Union, types.UnionType) and str in typing.get_args(kind)
    if (kind is str or (union_with_str and not raw.lstrip().startswith(("{", "[")))) and not quoted:
        return keys, raw
    try:
        value = safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"command line {text!r}: invalid YAML value: {str(exc).splitlines()[0]}") from None
    if typing.get_origin(kind) in (list, tuple) and not isinstance(value, (list, tuple)):
        value = [raw if typing.get_args(kind) and typing.get_args(kind)[0] is str and not quoted else value]
    return keys, value


def _example_override(cls: type | None) -> str:
    """A `key=value` the schema of `cls` accepts, for the hint of a malformed override."""
    if cls is None or not dataclasses.is_dataclass(cls):
        return "lr=1e-5"
    hints = typing.get_type_hints(cls)
    if "lr" in hints:
        return "lr=1e-5"
    name = next((f.name for f in dataclasses.fields(cls) if hints[f.name] is str), dataclasses.fields(cls)[0].name)
    return f"{name}=VALUE"


def _check_override_keys(text: str, keys: list[str], cls: type | None) -> None:
    """A command-line key the schema does not have is the command line's mistake, not the config file's."""
    for depth, key in enumerate(keys):
        if cls is None or not dataclasses.is_dataclass(cls):
            return  # below a free-form value (a dict or list): nothing to check against
        names = sorted(f.name for f in dataclasses.fields(cls))
        if key not in names:
            section = ".".join(keys[:depth]) or "the top level"
            raise ConfigError(f"command line {text!r}: unknown key {key!r} in {section}; valid keys: {names}")
        cls = typing.get_type_hints(cls).get(key)


def apply_overrides(data: dict, overrides: list[str], cls: type | None = None) -> dict:
    """Set dotted `key=value` overrides into a nested dict (values typed by `cls`'s schema where it has the key)."""
    for text in overrides:
        keys, value = _parse_override(text, cls)
        _check_override_keys(text, keys, cls)
        kind = _field_type(cls, keys)
        if kind is not None and not dataclasses.is_dataclass(kind):  # the command line's own mistake is named so
            _check_type(value, kind, f"command line {text!r}: {'.'.join(keys)}")  # checked here; built by from_dict
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {k} is not a section")
        node[keys[-1]] = value
    return data


def load(cls: type, path: str | Path | None = None, overrides: list[str] | None = None) -> Any:
    """Load config `cls` from a YAML file (optional) plus `key=value` overrides.

    Args:
        cls: the top-level config dataclass.
        path: YAML file; its keys override the dataclass defaults.
        overrides: dotted `key=value` strings applied after the file.

    Returns:
        A validated instance of `cls`.
    """
    data: dict = {}
    where = "config"
    if path is not None:
        where = str(path)
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
        try:
            data = safe_load(text, str(path)) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    data = apply_overrides(data, overrides or [], cls)
    return from_dict(cls, data, where)


def save(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (into a run directory)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


@dataclass
class DataSource:
    """`data.train: {format, path}`: a set in another layout, read directly (see mmpo.formats)."""

    format: str = "auto"  # a key of mmpo.formats.FORMATS (rlaif_v, trl, llamafactory, swift, ...) or auto
    path: str = ""  # a snapshot folder (parquet / arrow / json / jsonl) or one data file


@dataclass
class DataConfig:
    train: str | DataSource = ""  # pair JSONL (preference stages) or SFT JSONL (stage sft), or {format, path}
    format: str = "mmpo"  # data.train's layout: mmpo (JSONL), or what data.train: {format, path} named
    media_root: str = ""  # folder the records' media paths are relative to ("" = the JSONL's folder)
    max_length: int = 0  # prompt (media tokens included) + answer; longer samples error or skip (0 = the model's context)
    on_bad_record: str = "error"  # error | skip (bad lines, missing media, too long: counted and logged)
    num_workers: int = 0  # DataLoader worker processes decoding and augmenting media
    shuffle: bool = True  # reshuffle each epoch (seeded by seed + epoch, so resume is exact)

    def __post_init__(self):
        check_range(self, max_length=">= 0", num_workers=">= 0")
        if isinstance(self.train, DataSource):  # folded into two plain fields, so the saved config reloads as is
            self.format, self.train = self.train.format, self.train.path
        check_choice(self, on_bad_record=("error", "skip"))


@dataclass
class LossTerm:
    name: str = "dpo"  # a key of mmpo.losses.LOSSES
    weight: float = 1.0  # the term's weight in the explicit weighted sum
    params: dict = field(default_factory=dict)  # the loss class's hyperparameters (e.g. beta)


@dataclass
class PamiConfig:
    js_top_k: int = 0  # top-k truncation of the vocabulary for the JS distance (0 = full vocabulary)


@dataclass
class MultiRoundConfig:
    num_rounds: int = 3  # rounds of merge -> fresh LoRA -> reference refresh -> regenerate -> train
    steps_per_round: int = 1000  # optimizer steps per round (mrDPO: ~1,000)
    num_samples: int = 4  # answers sampled per prompt when regenerating pairs
    temperature: float = 1.0  # sampling temperature for regeneration (0 = greedy)
    max_new_tokens: int = 32  # generation length for regeneration
    scorer: str = "exact"  # scorer that ranks sampled answers (exact = the SFT answer as ground truth)
    min_gap: float = 0.0  # keep best-vs-worst pairs whose score gap exceeds this
    gt_weight: float = 0.1  # weight of the NLL guidance term on the ground-truth answer (mrDPO gdpo)
    rebirth: bool = False  # after the rounds, SFT the pre-DPO model on the final model's answers
    rebirth_steps: int = 100  # SFT steps for rebirth tuning
    gt_fallback: bool = True  # chosen = the ground-truth answer when no sample scores as well as it
    save_merged: bool = True  # also save the final merged model to output_dir/model (one folder for eval)

    def __post_init__(self):
        check_range(self, num_rounds=">= 1", steps_per_round=">= 1", num_samples=">= 1", temperature=">= 0",
                    max_new_tokens=">= 1", gt_weight=">= 0", rebirth_steps=">= 1")


@dataclass
class DistillConfig:
    teacher: ModelConfig = field(default_factory=ModelConfig)  # the teacher (same tokenizer as the student)
    mimic_steps: int = 100  # steps of mimic distillation (token-level forward KL on answer tokens)
    mimic_data: str = ""  # SFT JSONL for mimic distillation ("" = data.train's SFT file if stage data is SFT)
    mimic_nll_weight: float = 0.0  # add the student's own NLL (LLaVA-MoD kd_lm) with this weight
    preference_steps: int = 100  # steps of preference distillation (DPO with the teacher as reference)
    preference_loss: str = "dpo"  # dpo | kto_pair | dpkd
    preference_data: str = ""  # pair JSONL for preference distillation (required if preference_steps > 0)
    beta: float = 0.1  # beta of the preference distillation loss
    dpkd_ratio: float = 0.5  # DPKD k: total = (1 - k) * CE(gold) + k * L_DPKD (LMOps dpkd kd_ratio)

    def __post_init__(self):
        check_range(self, mimic_steps=">= 0", preference_steps=">= 0", beta="> 0", dpkd_ratio="[0, 1]",
                    mimic_nll_weight=">= 0")


@dataclass
class TrainConfig:
    stage: str = "dpo"  # dpo | sft | multi_round | distill
    output_dir: str = "runs/train"  # run directory: config.yaml, metrics.jsonl, checkpoints/, adapter/
    seed: int = 0  # seeds torch, numpy, python and the data order
    deterministic: bool = False  # deterministic GPU kernels + cuBLAS workspace (mmpo/determinism.py; README Reproducibility)
    model: ModelConfig = field(default_factory=ModelConfig)  # the policy (and, with adapters off, the reference)
    lora: LoraConfig = field(default_factory=LoraConfig)  # adapter settings (lora.enabled false = full fine-tune)
    data: DataConfig = field(default_factory=DataConfig)  # training data
    loss: list[LossTerm] = field(default_factory=lambda: [LossTerm()])  # summed terms (ignored by stage sft)
    # TRL's spelling of `loss` (a DPOConfig's loss section carries over; README "Losses"), read into `loss`:
    loss_type: list[str] | str = field(default_factory=list)  # TRL loss type(s), e.g. [sigmoid, sft] (or mmpo names)
    loss_weights: list[float] = field(default_factory=list)  # with loss_type: one weight each (default 1.0)
    beta: float = 0.1  # with loss_type: TRL's beta, for every term
    label_smoothing: float = 0.0  # with loss_type: TRL's label_smoothing (robust, exo_pair, aot: their eps)
    discopop_tau: float = 0.05  # with loss_type: discopop's tau
    f_divergence_type: str = "reverse_kl"  # with loss_type: reverse_kl | forward_kl | js_divergence | alpha_divergence
    f_alpha_divergence_coef: float = 0.5  # with loss_type: alpha of alpha_divergence
    use_weighting: bool = False  # WPO (TRL's use_weighting): scale each pair's loss by its policy probabilities
    lr: float = 2e-5  # peak learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    warmup_ratio: float = 0.03  # linear warm-up share of the steps, then cosine decay to 0
    max_steps: int = 0  # optimizer steps (0 = derive from epochs)
    epochs: float = 1.0  # passes over the data when max_steps is 0
    batch_size: int = 4  # pairs (or SFT samples) per micro-batch per process
    grad_accum: int = 1  # micro-batches per optimizer step
    max_grad_norm: float = 1.0  # gradient clipping (0 = off)
    optimizer: str = "adamw"  # adamw | adamw_8bit (bitsandbytes, CUDA)
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast on CUDA; fp32 on CPU)
    gradient_checkpointing: bool = False  # recompute activations in backward
    shared_prefix: bool = True  # one packed forward per pair when chosen/rejected share media and prompt
    precompute_reference: bool = False  # reference log-probs computed once before training and cached
    log_every: int = 1  # log metrics every N optimizer steps
    save_every: int = 0  # checkpoint every N steps for resume (0 = only on interrupt; the final adapter is always saved)
    save_total_limit: int = 0  # keep only the newest N checkpoints, deleting older ones (0 = keep all; HF's name)
    save_on_interrupt: bool = True  # on SIGINT / SIGTERM (Ctrl-C, a scheduler's preemption) finish the step, save, stop
    eval_every: int = 0  # evaluate the policy every N steps (0 = never); `mmpo train` runs eval_config
    eval_config: str = ""  # a POPE eval YAML (configs/eval/pope_*.yaml; `limit` questions per split) for eval_every
    report_to: list[str] = field(default_factory=list)  # experiment trackers: tensorboard | wandb | mlflow | trackio | swanlab
    tracker_project: str = "mmpo"  # the trackers' project / experiment name
    run_name: str = ""  # the trackers' run name ("" = output_dir's folder name)
    tensorboard: bool = False  # old key: true = report_to includes tensorboard
    progress: bool = True  # tqdm bar on a terminal (piped output, or false: a loss line every ~5% of the steps)
    parallel: str = "auto"  # with several processes: ddp (replicate) | fsdp (shard, FSDP2) | auto (fsdp if launched so)
    dist_timeout_min: float = 180.0  # minutes a process waits for the others (main-only work: the eval hook)
    max_nonfinite_steps: int = 3  # stop (exit non-zero) after this many consecutive skipped non-finite steps (0 = never)
    allow_config_change: bool = False  # resume a run folder whose config.yaml differs (else refused, listing the keys)
    pami: PamiConfig = field(default_factory=PamiConfig)  # PaMi-VDPO bag scoring
    multi_round: MultiRoundConfig = field(default_factory=MultiRoundConfig)  # stage multi_round
    distill: DistillConfig = field(default_factory=DistillConfig)  # stage distill

    def __post_init__(self):
        """Every check `mmpo train` makes of the settings themselves, all reported at once (`mmpo validate` runs
        exactly these: what one accepts, the other does too)."""
        problems = Problems()
        with problems.check():
            check_choice(self, stage=("dpo", "sft", "multi_round", "distill"), parallel=("auto", "ddp", "fsdp"),
                         precision=("fp32", "bf16", "fp16"), optimizer=("adamw", "adamw_8bit"))
        if self.tensorboard and "tensorboard" not in self.report_to:
            self.report_to = [*self.report_to, "tensorboard"]
        with problems.check():
            check_report_to(self.report_to)
        with problems.check():
            check_range(self, lr="> 0", weight_decay=">= 0", warmup_ratio="[0, 1)", max_steps=">= 0", epochs="> 0",
                        batch_size=">= 1", grad_accum=">= 1", max_grad_norm=">= 0", log_every=">= 1",
                        save_every=">= 0", save_total_limit=">= 0", eval_every=">= 0", max_nonfinite_steps=">= 0",
                        dist_timeout_min="> 0")
        if self.stage == "multi_round" and not self.lora.enabled:
            problems.errors.append("stage: multi_round merges a LoRA each round: set lora.enabled: true")
        if self.model.load_in_4bit and not self.lora.enabled:
            problems.errors.append("lora.enabled: full fine-tuning of a 4-bit model is not possible; enable LoRA "
                                   "(lora.enabled=true) or drop model.load_in_4bit")
        if self.stage == "distill":
            d = self.distill
            if d.preference_loss not in ("dpo", "kto_pair", "dpkd"):
                problems.errors.append(f"distill.preference_loss: expected dpo | kto_pair | dpkd, got "
                                       f"{d.preference_loss!r}")
            if d.preference_steps > 0 and not d.preference_data:
                problems.errors.append("distill.preference_data: a pair JSONL is needed when "
                                       "distill.preference_steps > 0")
        # Loss names and hyperparameters (beta > 0, ...) are checked by the loss classes themselves; building the
        # terms here makes `mmpo validate` refuse what `mmpo train` would (losses import this module: lazily).
        from mmpo.losses import build_loss_terms, requires_of, resolve_trl_loss

        with problems.check():
            resolve_trl_loss(self)  # TRL's loss_type section, if given, becomes `loss` (config.yaml holds only that)
            terms = build_loss_terms([to_dict(t) for t in self.loss], "loss")
            names = {t.name for t in self.loss}
            if self.use_weighting and {"aot", "aot_unpaired"} & names:
                problems.errors.append("use_weighting: aot and aot_unpaired sort the batch, so per-pair WPO weights "
                                       "cannot apply")
            if self.use_weighting and (self.stage == "sft" or (self.stage == "distill"
                                                               and self.distill.preference_loss == "dpkd")):
                problems.errors.append("use_weighting: WPO weights the loss terms' pairs; stage sft and dpkd have no "
                                       "such terms")
            if (self.stage == "dpo" and not self.lora.enabled and not self.precompute_reference
                    and "reference" in requires_of(terms)):
                problems.errors.append("lora.enabled: full fine-tuning (lora.enabled: false) has no adapter to "
                                       "disable for the reference: set precompute_reference: true")
        problems.raise_any()

