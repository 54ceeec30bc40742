"""Typed settings from YAML: dataclasses loaded from a file plus `key=value` overrides, every problem named.

The machinery every config class in mmpo uses (`mmpo.config`'s TrainConfig, the model layer's ModelConfig, the
builders' and evaluators' configs): a schema lives in code (each field's comment is its documentation) and YAML
only overrides it. Unknown keys and wrong types are errors that name the file and the key, so a typo never
silently falls back to a default (nanoGPT's unknown-key ValueError, litgpt's typed TrainArgs). This module
imports nothing from mmpo, so any layer can use it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml


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
    removed = getattr(cls, "REMOVED_KEYS", {})  # key -> what replaced it: an old config is told what to write
    problems.errors += [f"{_key_path(where, k)}: {removed[k]}" for k in sorted(set(data) & removed.keys())]
    unknown = sorted(set(data) - names - removed.keys())
    if unknown:
        problems.errors.append(f"{where}: unknown key(s) {unknown}{did_you_mean(unknown, names)}; "
                               f"valid keys: {sorted(names)}")
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
    args = typing.get_args(cls)
    if typing.get_origin(cls) in (typing.Union, types.UnionType) and type(None) in args and len(args) == 2:
        return next(a for a in args if a is not type(None))  # X | None: a value given is an X
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


# Names other trainers (transformers' TrainingArguments, TRL) use for a setting mmpo calls otherwise.
OTHER_TOOLS_NAMES = {"learning_rate": "lr", "num_train_epochs": "epochs", "per_device_train_batch_size": "batch_size",
                     "gradient_accumulation_steps": "grad_accum", "logging_steps": "log_every",
                     "save_steps": "save_every", "eval_steps": "eval_every", "warmup_steps": "warmup_ratio"}


def did_you_mean(unknown: list[str], names) -> str:
    """' (did you mean 'max_steps'?)' for the unknown keys close to a valid one or named so by another tool; ''."""
    import difflib

    guesses = {}
    for key in unknown:
        close = [OTHER_TOOLS_NAMES[key]] if OTHER_TOOLS_NAMES.get(key) in names else \
            difflib.get_close_matches(key, list(names), n=1, cutoff=0.75)
        if close:
            guesses[key] = close[0]
    if not guesses:
        return ""
    return " (did you mean " + ", ".join(f"{g!r} for {k!r}" if len(unknown) > 1 else repr(g)
                                         for k, g in guesses.items()) + "?)"


def _check_override_keys(text: str, keys: list[str], cls: type | None) -> None:
    """A command-line key the schema does not have is the command line's mistake, not the config file's."""
    for depth, key in enumerate(keys):
        if cls is None or not dataclasses.is_dataclass(cls):
            return  # below a free-form value (a dict or list): nothing to check against
        names = sorted(f.name for f in dataclasses.fields(cls))
        if key in getattr(cls, "REMOVED_KEYS", {}):
            raise ConfigError(f"command line {text!r}: {'.'.join(keys[:depth + 1])}: {cls.REMOVED_KEYS[key]}")
        if key not in names:
            section = ".".join(keys[:depth]) or "the top level"
            raise ConfigError(f"command line {text!r}: unknown key {key!r} in {section}"
                              f"{did_you_mean([key], names)}; valid keys: {names}")
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
