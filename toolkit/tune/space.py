"""The search space: which config keys a study samples, and from what.

Each task has a default space (`default_space`); a YAML file overrides it key by key
(`load_space`), the keys being config keys:

    lr: {type: float, low: 0.0003, high: 0.01, log: true}
    hidden_size: {type: categorical, choices: [32, 64, 128]}
    num_layers: {type: int, low: 1, high: 3}
    warmup: null            # not searched: the base config's value is used

The file may come from anywhere, so it is read bounded and checked before use: unknown keys,
unknown fields, wrong types and values the config would refuse are errors (ConfigError) that name
the key and what is accepted. Imports neither optuna nor torch (a `trial` is duck-typed).
"""

from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from toolkit.core.config import Config, ModelConfig, TrainConfig
from toolkit.core.errors import ConfigError

MAX_SPACE_BYTES = 64 * 1024
MAX_KEYS = 64
MAX_CHOICES = 64
MAX_TEXT = 200  # characters of a categorical string choice
TYPES = ("float", "int", "categorical")
FIELDS = {"float": ("low", "high", "log", "step"), "int": ("low", "high", "log", "step"), "categorical": ("choices",)}
# Every trial of a study must be compared on equal terms: where it runs, the metric it is judged
# by, its seed and its time budget are the study's, never sampled.
NOT_SEARCHED = {"out", "device", "seed", "monitor", "max_time", "amp"}
SECTIONS = {
    **{f.name: ("model", str(f.type)) for f in fields(ModelConfig)},
    **{f.name: ("train", str(f.type)) for f in fields(TrainConfig) if f.name not in NOT_SEARCHED},
}
# A hostile file must not ask for a model that cannot fit in memory.
LIMITS = {"hidden_size": 8192, "embedding_dim": 8192, "num_layers": 32, "decoder_layers": 32, "batch_size": 65536}
MAX_INT = 1 << 20
# key -> (the key it depends on, whether that value enables it, the value when it does not):
# dropout acts only between stacked layers (torch warns and ignores it for one layer).
CONDITIONS = {"dropout": ("num_layers", lambda layers: layers > 1, 0.0)}


@dataclass(frozen=True)
class Param:
    """One searched key: float or int in [low, high] (log scale, or a step), or categorical."""

    key: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()

    @property
    def section(self) -> str:
        return SECTIONS[self.key][0]

    def to_dict(self) -> dict[str, Any]:
        if self.type == "categorical":
            return {"type": self.type, "choices": list(self.choices)}
        spec = {"type": self.type, "low": self.low, "high": self.high, "log": self.log}
        return {**spec, "step": self.step} if self.step is not None else spec

    def describe(self) -> str:
        if self.type == "categorical":
            return "{" + ", ".join(map(str, self.choices)) + "}"
        scale = " log" if self.log else f" step {self.step:g}" if self.step is not None else ""
        return f"{self.type} {self.low:g}..{self.high:g}{scale}"

    def suggest(self, trial) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)


class Space:
    def __init__(self, params: dict[str, Param]):
        # a key that others depend on is sampled first, so their condition is known
        self.params = dict(sorted(params.items(), key=lambda kv: kv[0] in CONDITIONS))

    def __contains__(self, key: str) -> bool:
        return key in self.params

    def __len__(self) -> int:
        return len(self.params)

    def without(self, keys) -> Space:
        return Space({k: p for k, p in self.params.items() if k not in set(keys)})

    def to_dict(self) -> dict[str, dict]:
        return {k: p.to_dict() for k, p in self.params.items()}

    def describe(self) -> str:
        return ", ".join(f"{k} {p.describe()}" for k, p in self.params.items()) or "nothing (every key fixed)"

    def suggest(self, trial, base: Config) -> dict[str, Any]:
        """Values for one trial: each key sampled, or set to its off value when its condition
        (on a sampled or fixed key) does not hold."""
        values: dict[str, Any] = {}
        for key, param in self.params.items():
            if key in CONDITIONS:
                on, enabled, off = CONDITIONS[key]
                current = values.get(on, getattr(getattr(base, SECTIONS[on][0]), on))
                if not enabled(current):
                    values[key] = off
                    continue
            values[key] = param.suggest(trial)
        return values

    @staticmethod
    def apply(config: Config, values: dict[str, Any]) -> Config:
        for key, value in values.items():
            setattr(getattr(config, SECTIONS[key][0]), key, value)
        return config


def _float(key, low, high, log=False) -> Param:
    return Param(key, "float", low, high, log)


def _choices(key, *choices) -> Param:
    return Param(key, "categorical", choices=choices)


COMMON = [
    _float("lr", 3e-4, 1e-2, log=True),
    _choices("hidden_size", 32, 64, 128, 256),
    Param("num_layers", "int", 1, 2),
    _float("dropout", 0.0, 0.5),
    _choices("batch_size", 8, 16, 32, 64),
    _float("weight_decay", 1e-6, 1e-2, log=True),
    _float("warmup", 0.0, 2.0),
]
BY_TASK = {
    "classify": [_choices("class_weight", "none", "balanced")],
    "tag": [_choices("class_weight", "none", "balanced")],
    "lm": [_choices("bptt", 32, 64, 128), _choices("embedding_dim", 32, 64, 128)],
    "seq2seq": [_choices("embedding_dim", 32, 64, 128), _float("label_smoothing", 0.0, 0.2)],
}


def default_space(task: str) -> Space:
    """The space searched when no file overrides it; cell and direction stay as configured."""
    return Space({p.key: p for p in COMMON + BY_TASK.get(task, [])})


def load_space(path: str | Path, task: str) -> Space:
    """The default space of `task` with the keys of the YAML file at `path` replacing (or, when
    null, removing) its entries."""
    raw = _read_yaml(Path(path))
    return merge(default_space(task), raw, task, str(path))


def merge(space: Space, raw: Any, task: str, where: str) -> Space:
    if raw is None:
        return space
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of config keys to ranges, got {type(raw).__name__}")
    if len(raw) > MAX_KEYS:
        raise ConfigError(f"{where}: {len(raw)} keys; a space has at most {MAX_KEYS}")
    params = dict(space.params)
    for key, spec in raw.items():
        if not isinstance(key, str) or key not in SECTIONS:
            raise ConfigError(f"{where}: {_unknown_key(key)}; searchable keys: {', '.join(sorted(SECTIONS))}")
        if spec is None:
            params.pop(key, None)
        else:
            params[key] = parse_param(key, spec, task, where)
    return Space(params)


def _unknown_key(key: Any) -> str:
    if isinstance(key, str) and key in NOT_SEARCHED:
        return f"{key!r} is not searched (it is the same for every trial of a study; give it as a flag)"
    return f"unknown key {str(key)[:MAX_TEXT]!r}"


def parse_param(key: str, spec: Any, task: str, where: str) -> Param:
    where = f"{where}: {key}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping like {{type: float, low: .., high: ..}}, or null")
    kind = spec.get("type")
    if kind not in TYPES:
        raise ConfigError(f"{where}: 'type' must be one of {', '.join(TYPES)}; got {str(kind)[:MAX_TEXT]!r}")
    unknown = sorted(str(f)[:MAX_TEXT] for f in set(spec) - {"type", *FIELDS[kind]})
    if unknown:
        accepted = ", ".join(("type", *FIELDS[kind]))
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)} for type {kind}; accepted: {accepted}")
    annotation = SECTIONS[key][1]
    numeric = {"int": "int" in annotation, "float": "float" in annotation}
    if kind != "categorical" and not (numeric["float"] or (kind == "int" and numeric["int"])):
        accepted = "int or categorical" if numeric["int"] else "categorical"
        raise ConfigError(f"{where}: takes {annotation} values, so not type {kind}; use type {accepted}")
    if kind == "categorical":
        param = Param(key, kind, choices=_choices_of(spec.get("choices"), where))
        for i, choice in enumerate(param.choices):
            _check_value(key, choice, task, f"{where}.choices[{i}]")
        return param
    low, high = (_number(spec.get(f), kind, f"{where}.{f}") for f in ("low", "high"))
    if not low < high:
        raise ConfigError(f"{where}: low ({low}) must be below high ({high}); for one value use categorical")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}.log: expected true or false, got {str(log)[:MAX_TEXT]!r}")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log scale needs low > 0, got {low}")
    step = spec.get("step")
    if step is not None:
        step = _number(step, kind, f"{where}.step")
        if log or step <= 0 or step > high - low:
            raise ConfigError(f"{where}.step: must be > 0, at most high - low, and not with log: true; got {step}")
    for field_name, value in (("low", low), ("high", high)):
        _check_value(key, value, task, f"{where}.{field_name}")
    return Param(key, kind, low, high, log, step)


def _number(value: Any, kind: str, where: str) -> float | int:
    ok = isinstance(value, int) if kind == "int" else isinstance(value, int | float)
    if not ok or isinstance(value, bool) or not math.isfinite(value):
        raise ConfigError(f"{where}: expected {'an integer' if kind == 'int' else 'a finite number'}, got {value!r}")
    if kind == "int" and abs(value) > MAX_INT:
        raise ConfigError(f"{where}: {value} is out of range (at most {MAX_INT})")
    return value


def _choices_of(choices: Any, where: str) -> tuple:
    if not isinstance(choices, list) or not 1 <= len(choices) <= MAX_CHOICES:
        raise ConfigError(f"{where}.choices: expected a list of 1 to {MAX_CHOICES} values")
    for i, c in enumerate(choices):
        scalar = c is None or isinstance(c, bool | int | float | str)
        if not scalar or (isinstance(c, float) and not math.isfinite(c)) or (isinstance(c, str) and len(c) > MAX_TEXT):
            shown = type(c).__name__ if not scalar else repr(c)[:MAX_TEXT]
            raise ConfigError(
                f"{where}.choices[{i}]: expected a number, a string (up to {MAX_TEXT} characters), "
                f"true/false or null; got {shown}"
            )
    if len({(type(c), c) for c in choices}) < len(choices):
        raise ConfigError(f"{where}.choices: each value may appear once")
    return tuple(choices)


def _check_value(key: str, value: Any, task: str, where: str) -> None:
    """`value` as the config would take it for `key`: its type and range (Config's own checks)."""
    limit = LIMITS.get(key)
    if limit is not None and isinstance(value, int | float) and value > limit:
        raise ConfigError(f"{where}: {value} is over the {limit} a search may ask for {key}")
    section = SECTIONS[key][0]
    try:
        Config.from_dict({"task": task, section: {key: value}}, where=where).validate()
    except ConfigError as e:
        message = str(e)
        raise ConfigError(message if message.startswith(where) else f"{where}: {message}") from None


def _read_yaml(path: Path) -> Any:
    """Parse a YAML file of at most MAX_SPACE_BYTES that must be a regular file; duplicate keys
    and nesting too deep to parse are errors too."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise ConfigError(f"cannot read search space file {path}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ConfigError(f"{path}: not a regular file")
        data = f.read(MAX_SPACE_BYTES + 1)
    if len(data) > MAX_SPACE_BYTES:
        raise ConfigError(f"{path}: over the {MAX_SPACE_BYTES} bytes a search space file may have")
    try:
        return yaml.load(data.decode("utf-8"), Loader=_StrictLoader)  # a SafeLoader
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}{line}: not valid YAML: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a search space") from None


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice (YAML would keep the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"{key!r} appears twice", key_node.start_mark)
            if isinstance(key, str):
                seen.add(key)
        return super().construct_mapping(node, deep=deep)
