"""An env's options dataclass <-> its train.py flags, the same way for every env.

An env declares its options once, as a frozen dataclass (`envs/<env>/options.py`) named by its spec
(`EnvSpec.options`); each field is one flag:

    reward_mode: str = field(default="legal", metadata={"help": "...", "choices": ("legal", "outcome")})

Metadata keys: `help` (required: every flag says what it means), `choices`, `metavar`, `nargs` ("+": one or more
values, collected with `action` "extend"), `action` ("append": the flag may repeat), `flag` (default: the field
name with dashes), `hash` ("env": hashed into the run's config under env_options, the default; "top": hashed at
the config's top level, where the field lived before envs declared their own; "skip": how a run is executed, not
what it learns, so never hashed). An optional `validate(self)` raises ValueError("--flag ...") for a bad value.

The trainer adds every env's flags (`add_env_flags`), then resolves the chosen env's into one typed object
(`resolve_env_options`) that reaches the env as `cfg.env_options`: nothing downstream rebuilds a parser.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Collection, Mapping
from typing import Any, TypeVar

from envs.registry import env_names, load_spec, spec_summary
from envs.spec import EnvFlagError

__all__ = ["EnvFlagError", "add_env_flags", "add_option_flags", "build_options", "check_options", "default_options",
           "env_flag_dests", "foreign_flag", "hash_view", "options_for", "resolve_env_options",
           "top_level_hash_defaults"]

HASH_PLACES = ("env", "top", "skip")
T = TypeVar("T")


def flag_name(field: dataclasses.Field) -> str:
    return str(field.metadata.get("flag") or "--" + field.name.replace("_", "-"))


def field_default(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def _base_type(hint: Any) -> tuple[type, bool]:
    """(the type one value of the flag has, whether the field holds a sequence of them)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return _base_type(inner[0]) if len(inner) == 1 else (str, False)
    if origin in (list, tuple):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return (args[0] if args else str), True
    return (hint if isinstance(hint, type) else str), False


def _argument(cls: type, field: dataclasses.Field, default: Any) -> dict[str, Any]:
    """argparse keyword arguments for one field."""
    meta = field.metadata
    if not meta.get("help"):
        raise TypeError(f"{cls.__name__}.{field.name}: an env option needs metadata={{'help': ...}} (its flag's help)")
    base, many = _base_type(typing.get_type_hints(cls)[field.name])
    kwargs: dict[str, Any] = {"dest": field.name, "help": meta["help"]}
    if base is bool and not many:
        kwargs |= {"action": argparse.BooleanOptionalAction, "default": default}
        return kwargs
    if base in (int, float):
        kwargs["type"] = base
    for key in ("choices", "metavar", "nargs", "action"):
        if key in meta:
            kwargs[key] = meta[key]
    if many and "nargs" not in meta and "action" not in meta:
        kwargs["nargs"] = "+"
    if kwargs.get("nargs") == "+" and "action" not in kwargs:
        kwargs["action"] = "extend"
    # an append/extend flag adds to a list: a fresh one per parser (argparse would append to a shared default)
    kwargs["default"] = list(default) if isinstance(default, (list, tuple)) else default
    if many and default:  # shown as typed (`a b c`), not as a Python list
        kwargs["help"] = f"{meta['help']} (default: {' '.join(map(str, default))})"
    return kwargs


def add_option_flags(group: Any, cls: type, defaults: Mapping[str, Any] | None = None,
                     only: Collection[str] | None = None) -> None:
    """One flag per field of `cls` on `group` (a parser or an argument group); `defaults` overrides a field's
    default (an env's spec may size a flag for train.py); `only`: these fields alone."""
    for field in dataclasses.fields(cls):
        if only is not None and field.name not in only:
            continue
        default = (defaults or {}).get(field.name, field_default(field))
        try:
            group.add_argument(flag_name(field), **_argument(cls, field, default))
        except argparse.ArgumentError as exc:  # a flag train.py (or another env) has already
            raise TypeError(f"{cls.__name__}.{field.name}: {exc}; name the field otherwise") from None


def build_options(cls: type, values: Mapping[str, Any]) -> Any:
    """Parsed values (flags or a config file) -> an instance of `cls`; a field not in `values` keeps its default.
    Lists become tuples where the field holds a tuple (a frozen options object holds nothing mutable)."""
    hints = typing.get_type_hints(cls)
    kept: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if field.name not in values:
            continue
        value = values[field.name]
        holds_tuple = tuple in {typing.get_origin(hints[field.name]),
                                *(typing.get_origin(a) for a in typing.get_args(hints[field.name]))}
        kept[field.name] = tuple(value) if holds_tuple and isinstance(value, list) else value
    return cls(**kept)


def check_options(options: Any) -> None:
    """The options' own check: EnvFlagError with its one line for a bad value."""
    validate = getattr(options, "validate", None)
    if validate is None:
        return
    try:
        validate()
    except ValueError as exc:
        raise EnvFlagError(str(exc)) from None


def _options_of(env: str) -> type | None:
    return load_spec(env).options


def env_flag_dests() -> dict[str, set[str]]:
    """dest -> the envs declaring it (a shared flag, such as the frozen executor's, has several)."""
    dests: dict[str, set[str]] = {}
    for env in env_names():
        cls = _options_of(env)
        for field in dataclasses.fields(cls) if cls is not None else ():
            dests.setdefault(field.name, set()).add(env)
    return dests


def _declaring_class(cls: type, name: str) -> type:
    """The class of `cls`'s MRO that declares field `name` first (a shared mixin, or `cls` itself)."""
    for klass in reversed(cls.__mro__):
        if name in vars(klass).get("__annotations__", {}):
            return klass
    return cls


def _first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0].rstrip(".") if lines else ""


def add_env_flags(parser: argparse.ArgumentParser) -> None:
    """Every env's flags, one argument group per env ("--env NAME: what it is"), each showing the env's default;
    flags several envs share (a mixin of their options) are added once, in a group of their own naming them."""
    owners = env_flag_dests()
    added: set[str] = set()
    for env in env_names():
        spec = load_spec(env)
        if spec.options is None:
            continue
        names = {f.name for f in dataclasses.fields(spec.options)}
        own = {name for name in names if len(owners[name]) == 1}
        group = parser.add_argument_group(f"--env {env}: {spec_summary(env)}")
        add_option_flags(group, spec.options, spec.defaults, only=own)
        by_mixin: dict[type, set[str]] = {}
        for name in names - own - added:
            by_mixin.setdefault(_declaring_class(spec.options, name), set()).add(name)
        for mixin, shared in by_mixin.items():
            envs = sorted(set.union(*(owners[name] for name in shared)))
            title = ", ".join(f"--env {e}" for e in envs) + f": {_first_line(mixin.__doc__)}"
            add_option_flags(parser.add_argument_group(title), spec.options, spec.defaults, only=shared)
            added |= shared


def foreign_flag(given: Collection[str], allowed: Collection[str], where: str) -> str | None:
    """The one line for the first given flag that no env in `allowed` declares, else None."""
    owners = env_flag_dests()
    for dest in sorted(d for d in given if d in owners):
        if owners[dest] & set(allowed):
            continue
        env = sorted(owners[dest])[0]
        field = next(f for f in dataclasses.fields(_options_of(env)) if f.name == dest)  # type: ignore[arg-type]
        envs = " or ".join(f"--env {e}" for e in sorted(owners[dest]))
        return f"{flag_name(field)} belongs to {envs}, not {where}"
    return None


def resolve_env_options(env: str, values: dict[str, Any], given: set[str],
                        mixed: Collection[str] = ()) -> tuple[dict[str, Any], Any]:
    """Parsed flag values -> (the values with every env flag removed, the typed options of `env`: an instance of
    its spec's `options`, or None when it has none). `given`: the dests the user set; a flag of another env among
    them is an EnvFlagError naming it. `mixed`: the envs of a mixed run (--mix), whose flags may all be given."""
    owners = env_flag_dests()
    common = {key: value for key, value in values.items() if key not in owners}
    where = f"--mix ({', '.join(mixed)})" if mixed else f"--env {env}"
    if problem := foreign_flag(given, {env, *mixed}, where):
        raise EnvFlagError(problem)
    cls = _options_of(env) if env in env_names() else None
    if cls is None:
        return common, None
    options = build_options(cls, values)
    check_options(options)
    return common, options


def options_for(cfg: Any, cls: type[T]) -> T:
    """The typed options the trainer resolved for this run (`cfg.env_options`, read as is); a config built in code
    that carries none runs with the options' defaults."""
    options = getattr(cfg, "env_options", None)
    if not options:
        return cls()
    if not isinstance(options, cls):
        raise TypeError(f"cfg.env_options is a {type(options).__name__}, not the env's {cls.__name__}")
    return options


def default_options(env: str) -> Any:
    """The options an env runs with when none were resolved (a config built in code): its fields' defaults."""
    cls = _options_of(env) if env in env_names() else None
    return cls() if cls is not None else None


def hash_view(options: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The options as a run's config hash has always seen them: (fields hashed at the config's top level, the
    env_options dict). Runs made before envs declared their options keep their hash, so a resume is not refused.
    An options object may bring its own (the mix: one dict per env)."""
    if options is None:
        return {}, {}
    if hasattr(options, "hash_view"):
        return options.hash_view()
    top: dict[str, Any] = {}
    own: dict[str, Any] = {}
    for field in dataclasses.fields(options):
        place = field.metadata.get("hash", "env")
        if place not in HASH_PLACES:
            raise TypeError(f"{type(options).__name__}.{field.name}: hash must be one of {HASH_PLACES}")
        value = getattr(options, field.name)
        if place == "top":
            top[field.name] = value
        elif place == "env":
            own[field.name] = list(value) if isinstance(value, tuple) else value
    return top, own


def top_level_hash_defaults() -> dict[str, Any]:
    """Every env's `hash: top` fields at their defaults: before envs declared their options these were config
    fields, hashed for every run whatever its env, so every run's hash still holds them."""
    defaults: dict[str, Any] = {}
    for env in env_names():
        cls = _options_of(env)
        for field in dataclasses.fields(cls) if cls is not None else ():
            if field.metadata.get("hash") == "top":
                defaults[field.name] = field_default(field)
    return defaults
