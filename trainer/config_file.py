"""`train.py --config exp.toml`: any flag from a file, the command line overriding it; and the resolved config.

Why a file: a run's settings (a few dozen flags, an env's own options) are easier to keep, diff and share as one
file than as a long command line. Keys are flag names without dashes (`groups_per_step = 2` or `groups-per-step`),
optionally inside tables named after a concern or an env (`[sampling] max_tokens = 256`, `[r2e] reward =
"partial"`); tables are only for reading, so they are flattened. Each key is checked against the parser's own
actions (type, choices, lists, booleans), so a file is held to the same rules as the command line, and a bad one
is one line naming `--config`, the file and the key.

A key the file sets counts as given, like a typed flag: an env's defaults fill only what neither names
(trainer/cli.py merges the two).

The resolved config (every field with its default filled in, the env's options in a table named after the env) is
written as `config.toml` beside `state.json` when a run starts, shown in the report, and printed by
`--print-config`; it reads back through `--config` to the same config hash. TOML is read with the standard
library; the writer below is a small one for the scalars, strings, lists and tables a config holds (no new
dependency). YAML (`.yaml`/`.yml`) is read with PyYAML where it is installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import enum
import math
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from backends.atomic import atomic_write_text
from trainer.config import ConfigError, ExperimentConfig

CONFIG_FILE = "config.toml"  # beside state.json: the resolved config of the run that last started there
YAML_SUFFIXES = (".yaml", ".yml")
COMMAND_LINE_ONLY = frozenset({"config", "print_config"})  # about the command line itself: not in a file
_BOOLEAN_ACTIONS = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)
_LIST_NARGS = ("+", "*")


# ---- reading ----------------------------------------------------------------------------------------------------


def load_config_file(path: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The file's settings, checked against `parser`'s actions: dest -> value as parse_args would give it.
    ConfigError (one line naming --config, the file and, where there is one, the key) for anything wrong."""
    where = f"--config {path}"
    raw = _read(path, where)
    actions = _actions_by_key(parser)
    values: dict[str, Any] = {}
    seen: dict[str, str] = {}
    for key, value in _flatten(raw):
        name = key.rsplit(".", 1)[-1].replace("-", "_")
        action = actions.get(name)
        if name in COMMAND_LINE_ONLY:
            raise ConfigError(f"{where}: {key} can only be given on the command line")
        if action is None:
            close = difflib.get_close_matches(name, actions, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else " (keys are flag names: groups_per_step = 2)"
            raise ConfigError(f"{where}: unknown key {key!r}{hint}")
        converted = _convert(action, value, f"{where}: {key}")
        if action.dest in values and values[action.dest] != converted:
            raise ConfigError(f"{where}: {key} = {value!r} sets {action.dest} again ({seen[action.dest]} set it "
                              f"to {values[action.dest]!r}); keep one")
        values[action.dest], seen[action.dest] = converted, key
    return values


def _read(path: str, where: str) -> dict[str, Any]:
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix not in (".toml", *YAML_SUFFIXES):
        raise ConfigError(f"{where}: expected a .toml file (or .yaml/.yml)")
    try:
        text = file.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{where}: is a folder, not a file") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: not UTF-8 text (byte {exc.start})") from None
    if suffix in YAML_SUFFIXES:
        return _read_yaml(text, where)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        if found := re.search(r"\s*\(at line (\d+), column (\d+)\)$", message):  # as editors take it: file:line:col
            raise ConfigError(f"{where}:{found[1]}:{found[2]}: not valid TOML: {message[:found.start()]}") from None
        raise ConfigError(f"{where}: not valid TOML: {message}") from None


def _read_yaml(text: str, where: str) -> dict[str, Any]:
    try:
        import yaml
    except ImportError:
        raise ConfigError(f"{where}: YAML needs PyYAML, which is not installed; write the file as TOML") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}{at}: not valid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of flag names to values, not a {type(data).__name__}")
    return data


def _flatten(table: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Tables are for reading only: `[sampling] max_tokens = 256` is `max_tokens = 256`."""
    items: list[tuple[str, Any]] = []
    for key, value in table.items():
        name = f"{prefix}{key}"
        items += _flatten(value, f"{name}.") if isinstance(value, Mapping) else [(name, value)]
    return items


def _actions_by_key(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Key -> action: each flag's dest, and its long option names with '_' for '-' (`--no-x` spellings are left
    out: `scale_rewards = false` says it plainly). Flags without a dest (--help, --config) cannot be set."""
    keys: dict[str, argparse.Action] = {}
    for action in parser._actions:
        if action.dest in (argparse.SUPPRESS, *COMMAND_LINE_ONLY) or isinstance(
                action, argparse._HelpAction | argparse._VersionAction):
            continue
        keys.setdefault(action.dest, action)
        if isinstance(action, argparse._StoreFalseAction | argparse.BooleanOptionalAction):
            continue
        for option in action.option_strings:
            if option.startswith("--"):
                keys.setdefault(option[2:].replace("-", "_"), action)
    return keys


def _convert(action: argparse.Action, value: Any, where: str) -> Any:
    """A file value -> what parse_args would have stored for the flag: its type applied, choices checked."""
    if value is None:  # YAML's null: only where the flag's own default is "not set"
        if action.default is None:
            return None
        raise ConfigError(f"{where}: needs a value (leave the key out for the default)")
    if isinstance(action, _BOOLEAN_ACTIONS):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} = {value!r}: expected true or false")
        return value
    if action.nargs == 0:
        raise ConfigError(f"{where}: this flag can only be given on the command line")
    if isinstance(action, argparse._AppendAction) or action.nargs in _LIST_NARGS or isinstance(action.nargs, int):
        items = value if isinstance(value, list) else [value]
        if action.nargs == "+" and not items:
            raise ConfigError(f"{where}: expected at least one value")
        return [_scalar(action, item, where) for item in items]
    if isinstance(value, list):
        raise ConfigError(f"{where} = {value!r}: expected one value, not a list")
    return _scalar(action, value, where)


def _scalar(action: argparse.Action, value: Any, where: str) -> Any:
    kind = action.type
    shown = f"{where} = {value!r}"
    if isinstance(value, dict | list) or isinstance(value, bool) and kind is not bool:
        raise ConfigError(f"{shown}: expected {_expected(kind)}")
    try:
        if isinstance(value, str):
            converted = kind(value) if callable(kind) else value
        elif kind is None or kind is str:
            raise ConfigError(f"{shown}: expected a string (quote it)")
        elif kind is int:
            if not isinstance(value, int):
                raise ConfigError(f"{shown}: expected an integer")
            converted = value
        elif kind is float:
            if not isinstance(value, int | float):
                raise ConfigError(f"{shown}: expected a number")
            converted = float(value)
        else:  # the flag's own type, given the value as the command line would spell it
            converted = kind(str(value))  # type: ignore[misc]
    except ConfigError:
        raise
    except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
        raise ConfigError(f"{shown}: {exc or 'invalid value'}") from None
    if action.choices is not None and converted not in action.choices:
        raise ConfigError(f"{shown}: choose from {', '.join(map(str, action.choices))}")
    return converted


def _expected(kind: Any) -> str:
    return {int: "an integer", float: "a number", None: "a string", str: "a string"}.get(kind, "a value")


# ---- the resolved config ----------------------------------------------------------------------------------------


def resolved_config(cfg: ExperimentConfig) -> dict[str, Any]:
    """Every field with its value (defaults filled in), grouped by concern where the fields say their group
    (field metadata "group"; the rest at the top), the env's options in a table named after the env (a mixed
    run: one per env), and `config_hash`. None stands for a setting left unset."""
    top: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {}
    for f in dataclasses.fields(cfg):
        if f.name == "env_options" or f.metadata.get("flag", "") is None:  # no flag: nothing a file could set
            continue
        group = f.metadata.get("group")
        (groups.setdefault(str(group), {}) if group else top)[f.name] = _plain(getattr(cfg, f.name))
    return {**top, **groups, **_env_tables(cfg), "config_hash": cfg.config_hash()}


def _env_tables(cfg: ExperimentConfig) -> dict[str, dict[str, Any]]:
    options = cfg.env_options
    if options is None or options == {}:
        return {}
    if cfg.mix is None:
        return {cfg.env: _fields_of(options)}
    per_env = options if isinstance(options, Mapping) else getattr(options, "envs", None) or {}  # MixOptions
    return {env: _fields_of(entry) for env, entry in per_env.items()}


def _fields_of(options: Any) -> dict[str, Any]:
    """A typed options object (a dataclass) or a mapping -> its settings. A nested dataclass (a mixed env's
    `MixedEnv.options`) is flattened into the same table; an env without options has None there: nothing."""
    if dataclasses.is_dataclass(options) and not isinstance(options, type):
        found: dict[str, Any] = {}
        for f in dataclasses.fields(options):
            value = getattr(options, f.name)
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                found |= _fields_of(value)
            elif not (f.name == "options" and value is None):
                found[f.name] = _plain(value)
        return found
    if isinstance(options, Mapping):
        return {str(k): _plain(v) for k, v in options.items()}
    return {}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list | set | frozenset):
        return [_plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, Path):
        return str(value)
    return value


def render_resolved(cfg: ExperimentConfig) -> str:
    """The resolved config as TOML that `--config` reads back to the same config (and config hash).

    What the file must not set is written as a comment: an unset setting (TOML has no null), the hash, and in a
    mixed run the per-env turn limits (each env's own, in its table) together with the run-wide value they
    replace, since setting that value would make it every env's."""
    resolved = resolved_config(cfg)
    config_hash = resolved.pop("config_hash")
    envs = set(_env_tables(cfg))
    field_names = {f.name for f in dataclasses.fields(cfg)}
    per_env: dict[str, list[Any]] = {}
    for env in envs:
        for key, value in resolved[env].items():
            if key in field_names:
                per_env.setdefault(key, []).append(value)
    lines = ["# The resolved config of a run: every setting, its default filled in. Run it again with",
             "#   python train.py --config config.toml [flags that override it]",
             f"# config_hash = {_toml_value(config_hash)}"]
    tables = {name: value for name, value in resolved.items() if isinstance(value, dict)}
    written: set[str] = set()

    def emit(key: str, value: Any, in_env: bool) -> None:
        if value is None:
            lines.append(f"# {key}: not set")
        elif in_env and key in field_names:
            lines.append(f"# {key} = {_toml_value(value)}  (this env's own)")
        elif not in_env and any(v != value for v in per_env.get(key, [])):
            lines.append(f"# {key} = {_toml_value(value)}  (each env uses its own)")
        elif key in written:  # a flag several mixed envs share: one value, set in the first table
            lines.append(f"# {key} = {_toml_value(value)}  (set above)")
        else:
            lines.append(f"{key} = {_toml_value(value)}")
            written.add(key)

    for key, value in resolved.items():
        if key not in tables:
            emit(key, value, in_env=False)
    for name, table in tables.items():
        lines += ["", f"[{_toml_key(name)}]" + ("  # the env's own options" if name in envs else "")]
        for key, value in table.items():
            emit(key, value, in_env=name in envs)
    return "\n".join(lines) + "\n"


def write_resolved(cfg: ExperimentConfig, run_dir: Path) -> Path:
    """`config.toml` beside state.json, written atomically (a kill leaves the old one or the new one)."""
    path = Path(run_dir) / CONFIG_FILE
    atomic_write_text(path, render_resolved(cfg))
    return path


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_string(key)


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_string(text: str) -> str:
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        elif 0xD800 <= ord(ch) <= 0xDFFF:  # a lone surrogate (undecodable argv bytes) has no TOML spelling
            out.append("\ufffd")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items() if v is not None) + "}"
    return _toml_string(str(value))
