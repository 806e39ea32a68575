"""The command line that fills `ExperimentConfig`: flags generated from the config's fields (one --help group per
concern) and from each env's options (one group per env, envs/options.py), an optional `--config FILE`, which of
them the user gave, and the env's own defaults for the ones left out. A bad flag is one line naming it (exit 2),
before any work.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import types
import typing
from collections.abc import Sequence
from dataclasses import MISSING, dataclass
from typing import Any

from entry_point import OneLineParser
from trainer.config import GROUPS, ConfigError, ExperimentConfig


def meaningful(default: Any) -> bool:
    """A default worth printing: not an absent value (None, False, an empty list or string)."""
    return default is not None and default is not False and default != [] and default != () and default != "" \
        and default is not argparse.SUPPRESS


class DefaultsWhereMeaningful(argparse.HelpFormatter):
    """ArgumentDefaultsHelpFormatter without "(default: None)": a default is shown only when it says something, and
    never twice (help that already speaks of its default keeps its own words)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or not action.option_strings or not meaningful(action.default):
            return text
        return f"{text} (default: %(default)s)"


def _flag_type(hint: Any) -> Any:
    """The value type a field's annotation asks of its flag: int, float, str, bool or list (Optional dropped)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return list if typing.get_origin(hint) is list else hint


def _per_env_defaults(name: str, default: Any, env_defaults: dict[str, dict[str, Any]]) -> str:
    """'per env: gmsh 640, r2e 256' for a field some envs default otherwise, else ''."""
    own = [f"{env} {values[name]}" for env, values in env_defaults.items()
           if name in values and values[name] != default]
    return f"per env: {', '.join(own)}" if own else ""


def _with_per_env(text: str, default: Any, per_env: str) -> str:
    """The help of a flag that some envs default otherwise: its global default, then each env's."""
    if text.endswith(")") and "(default" in text:  # "(default X; Y)" -> "(default X; Y; per env: ...)"
        return f"{text[:-1]}; {per_env})"
    return f"{text} (default {default}; {per_env})" if meaningful(default) else f"{text} ({per_env})"


def _env_defaults() -> dict[str, dict[str, Any]]:
    from envs.registry import env_names, load_spec

    return {env: dict(load_spec(env).defaults) for env in env_names()}


def add_config_flags(parser: argparse.ArgumentParser, env_defaults: dict[str, dict[str, Any]]) -> None:
    """One argument group per concern (config.GROUPS), one flag per field, from the fields' metadata."""
    from backends import BACKEND_KINDS
    from envs.registry import env_names

    hints = typing.get_type_hints(ExperimentConfig)
    groups = {key: parser.add_argument_group(title) for key, title in GROUPS.items()}
    generated = {"backend": {"choices": BACKEND_KINDS},  # the one list of each lives elsewhere
                 "env": {"metavar": "{" + ",".join(env_names()) + "}"}}  # checked as a config (ConfigError)
    for f in dataclasses.fields(ExperimentConfig):
        meta = f.metadata
        flag = meta.get("flag", "--" + f.name.replace("_", "-"))
        if flag is None:
            continue
        kind = _flag_type(hints[f.name])
        default = f.default_factory() if f.default_factory is not MISSING else f.default  # type: ignore[misc]
        kwargs: dict[str, Any] = {"dest": f.name, "help": meta["help"]}
        kwargs |= {key: meta[key] for key in ("choices", "metavar", "action") if key in meta}
        kwargs |= generated.get(f.name, {})
        if default is MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = default
        if kind is bool:
            kwargs.setdefault("action", argparse.BooleanOptionalAction if default else "store_true")
        elif kind is list:
            kwargs.setdefault("action", "append")
        elif kind in (int, float):
            kwargs["type"] = kind
        if per_env := _per_env_defaults(f.name, default, env_defaults):
            kwargs["help"] = _with_per_env(kwargs["help"], default, per_env)
        groups[meta["group"]].add_argument(flag, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from envs.options import add_env_flags

    p = OneLineParser(prog="train.py", description="Train an agent with SFT and GRPO on LoRA adapters (ART)",
                      usage="%(prog)s --experiment-name NAME [--env ENV | --mix ENV=RATIO,...] [--config FILE] "
                            "[flags: see the groups below]",
                      formatter_class=DefaultsWhereMeaningful, allow_abbrev=False)
    files = p.add_argument_group("config file")
    files.add_argument("--config", metavar="FILE",
                       help="read settings from a TOML file (any flag, by its name); flags given here override it")
    files.add_argument("--print-config", action="store_true",
                       help="print the fully resolved config (every default filled in) and exit")
    add_config_flags(p, _env_defaults())
    add_env_flags(p)
    return p


_UNSET = object()
FILE_FLAGS = frozenset({"config", "print_config"})  # about the command line itself, not settings of the run


def explicit_flags(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> set[str]:
    """The settings the user typed (argparse cannot tell a given value from its default, nor from a config file's
    value, which the parser holds as its default)."""
    probe = copy.deepcopy(parser)
    for action in probe._actions:  # an append action needs a list or None to append to
        action.default = None if isinstance(action, argparse._AppendAction) else _UNSET
        action.required = False
    return {k for k, v in vars(probe.parse_args(argv)).items() if v is not _UNSET and v is not None}


@dataclass(frozen=True)
class CommandLine:
    """What train.py was asked: the checked config, and whether only to print it (--print-config)."""

    config: ExperimentConfig
    print_config: bool = False


def _config_file_values(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> dict[str, Any]:
    """`--config FILE` -> {dest: value} (trainer/config_file.py), before the command line is parsed."""
    early = OneLineParser(add_help=False, allow_abbrev=False)
    early.add_argument("--config")
    known, _ = early.parse_known_args(argv)
    if known.config is None:
        return {}
    from trainer.config_file import load_config_file

    return load_config_file(known.config, parser)


def parse_command_line(argv: Sequence[str] | None = None) -> CommandLine:
    """Flags (over a config file's values) -> the checked config. Settings given neither way take the env's own
    defaults first (its spec's `defaults`: sizes that suit the env on the embedded model), then the global ones."""
    from envs.options import EnvFlagError, resolve_env_options
    from envs.registry import load_spec
    from envs.spec import UnknownEnvError
    from trainer.checks import check_config

    argv = list(argv) if argv is not None else None
    parser = build_parser()
    from_file = _config_file_values(parser, argv)
    if from_file.get("experiment_name") is not None:  # required on the command line only when no file holds it
        next(a for a in parser._actions if a.dest == "experiment_name").required = False
    parser.parse_args(argv)  # --help (with the real defaults) and a bad flag end here, before the probe below
    typed = explicit_flags(parser, argv)
    parser.set_defaults(**{k: v for k, v in from_file.items() if k not in typed})  # a typed list replaces the file's
    args = parser.parse_args(argv)
    values = {k: v for k, v in vars(args).items() if k not in FILE_FLAGS}
    given = (typed | set(from_file)) - FILE_FLAGS
    try:
        if args.mix is not None:  # a mixed run's defaults and options: envs/mix/mix.py
            from envs.mix.mix import mix_config_values

            common, env_options = mix_config_values(values, given)
        else:
            spec = load_spec(args.env)
            values |= {key: value for key, value in spec.defaults.items() if key not in given}
            common, env_options = resolve_env_options(args.env, values, given)
    except (EnvFlagError, UnknownEnvError) as exc:  # each names its flag
        raise ConfigError(str(exc)) from None
    config = ExperimentConfig(**common, env_options=env_options)
    check_config(config, lock=not args.print_config)
    return CommandLine(config, print_config=args.print_config)


def config_from_args(argv: Sequence[str] | None = None) -> ExperimentConfig:
    """Flags (and `--config FILE`) -> the checked config; ConfigError naming the flag otherwise."""
    return parse_command_line(argv).config
