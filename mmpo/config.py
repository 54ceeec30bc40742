"""Typed configs: dataclasses with one-line field docs, loaded from YAML plus `key=value` overrides.

The schema lives in code (each field's comment is its documentation); YAML files only override it.
Unknown keys and wrong types are errors that name the file and the key, so a typo never silently
falls back to a default (nanoGPT's unknown-key ValueError, litgpt's typed TrainArgs).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file and the key."""


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


@dataclass
class LoraConfig:
    enabled: bool = True  # train a LoRA adapter (False: full fine-tuning of the language model)
    r: int = 16  # LoRA rank
    alpha: int = 32  # LoRA alpha (scale = alpha / r)
    dropout: float = 0.0  # LoRA dropout
    # regex over module names: the language model's linear layers only (the vision tower has q/k/v too)
    target_modules: str = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    train_projector: bool = False  # also train the multimodal projector (full weights)


CONFIG_TYPES: dict[str, type] = {}  # filled by modules that define top-level configs (name -> dataclass)


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
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
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
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(names)}")
    kwargs = {k: _check_type(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    """The config as plain nested dicts (what `save` writes)."""
    return dataclasses.asdict(cfg)


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value (e.g. train.lr=1e-5)")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else ""


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set dotted `key=value` overrides (values parsed as YAML scalars) into a nested dict."""
    for text in overrides:
        keys, value = _parse_override(text)
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
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    data = apply_overrides(data, overrides or [])
    return from_dict(cls, data, where)


def save(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (into a run directory)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
