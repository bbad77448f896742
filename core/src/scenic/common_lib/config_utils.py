"""Loading configs by name or path, command-line overrides, and strict key checking.

A config is an `ml_collections.ConfigDict` returned by `get_config()` (optionally
`get_config(arg)`) in a Python file. Every key must be read by some code: keys are
checked against the parameters of what consumes them (the trainer's schema, the
model's constructor, the data set builder, the optimizer function), so a typo is an
error that names the key instead of a silently ignored setting.
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import importlib
import importlib.util
import inspect
import pathlib
import pkgutil
import traceback
from collections.abc import Callable, Iterable

import ml_collections


class ConfigError(ValueError):
    """A config that cannot be used as written. The message names the key or file."""


def list_configs(config_package: str) -> list[str]:
    """Names of the configs (modules with `get_config`) shipped in a package."""
    package = importlib.import_module(config_package)
    names = []
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_"):
            continue
        names.append(info.name)
    return sorted(names)


def load_config(spec: str, config_package: str | None = None) -> ml_collections.ConfigDict:
    """Loads `NAME_OR_PATH[:arg]`: a config name from `config_package` or a .py file path."""
    name, _, arg = spec.partition(":")
    path = pathlib.Path(name)
    if name.endswith(".py") or path.exists():
        if not path.is_file():
            raise ConfigError(f"Config file {name!r} does not exist.")
        module_spec = importlib.util.spec_from_file_location(f"_scenic_config_{path.stem}", path)
        if module_spec is None:
            raise ConfigError(f"Config file {name!r} is not a Python file.")
        module = importlib.util.module_from_spec(module_spec)
        where = str(path)
        with config_file_errors(where):
            module_spec.loader.exec_module(module)
    else:
        known = list_configs(config_package) if config_package else []
        if name not in known:
            hint = did_you_mean(name, known)
            raise ConfigError(
                f"Unknown config {name!r}.{hint} Known configs: {', '.join(known) or 'none'}; "
                "or pass a path to a .py file."
            )
        with config_file_errors(f"{config_package}.{name}"):
            module = importlib.import_module(f"{config_package}.{name}")
        where = module.__file__
    if not hasattr(module, "get_config"):
        raise ConfigError(f"Config file {where} has no get_config() function.")
    with config_file_errors(where, "get_config()"):
        config = module.get_config(arg) if arg else module.get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"get_config() in {where} must return an ml_collections.ConfigDict.")
    return config


@contextlib.contextmanager
def config_file_errors(where: str, what: str = "loading"):
    """Turns an error raised while loading a config file (a syntax error, a failing import,
    an exception in `get_config()`) into one ConfigError naming the file and line."""
    try:
        yield
    except ConfigError:
        raise
    except SyntaxError as error:
        raise ConfigError(
            f"Config file {where} does not parse: {error.msg} (line {error.lineno})."
        ) from None
    except Exception as error:
        frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == where]
        line = f" (line {frames[-1].lineno})" if frames else ""
        raise ConfigError(
            f"Config file {where}: {what} failed{line}: {type(error).__name__}: {error}"
        ) from None


def parse_override_value(text: str):
    """Parses a command-line value: Python literals (1, 0.5, True, (1, 2), 'a'), else a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        return text


def apply_overrides(
    config: ml_collections.ConfigDict,
    overrides: Iterable[str],
    open_sections: Iterable[str] = (),
    open_top_level: bool = False,
) -> None:
    """Applies `a.b.c=value` overrides in place; only existing keys may be set, except
    directly inside `open_sections` (sections whose keys their consumer checks, such as
    `optimizer`) and, with `open_top_level`, at the top level (when a schema check
    follows), where an override may add a key, or start an open section the config file
    leaves out (`--config.mixup.mixup_alpha=0.2`)."""
    open_sections = tuple(open_sections)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"Override {item!r} must look like --config.a.b=value.")
        *parents, leaf = key.split(".")
        node = config
        for depth, part in enumerate(parents):
            if depth == 0 and open_top_level and part in open_sections and not node.get(part):
                with node.unlocked():  # e.g. --config.mixup.mixup_alpha=0.2: a new section
                    node[part] = ml_collections.ConfigDict()
            if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
                raise ConfigError(
                    f"Unknown config key {'.'.join(parents[: depth + 1])!r} in override {item!r}."
                    + did_you_mean(part, list(node.keys()))
                )
            node = node[part]
        may_add = (len(parents) == 1 and parents[0] in open_sections) or (
            not parents and open_top_level
        )
        if leaf not in node and not may_add:
            raise ConfigError(
                f"Unknown config key {key!r} in override {item!r}."
                + did_you_mean(leaf, list(node.keys()))
            )
        value = parse_override_value(text)
        current = node.get(leaf)
        if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif isinstance(current, str) and not isinstance(value, str):
            value = text
        elif isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        with node.unlocked():
            try:
                node[leaf] = value
            except TypeError:  # ml_collections keeps a field's type
                raise ConfigError(
                    f"Override {item!r}: {key} is {current!r} (type "
                    f"{type(current).__name__}) and {value!r} cannot be one; a config file "
                    f"of your own can set a value of another type."
                ) from None


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """A " Did you mean 'x'?" hint naming the closest candidate, or "" if none is close."""
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def check_keys(
    section: ml_collections.ConfigDict | None,
    allowed: Iterable[str],
    where: str,
) -> None:
    """Raises ConfigError naming the first key of `section` that is not in `allowed`."""
    if section is None:
        return
    allowed = list(allowed)
    for key in section.keys():
        if key not in allowed:
            raise ConfigError(
                f"Unknown config key {where + '.' if where else ''}{key}: nothing reads it."
                f"{did_you_mean(key, allowed)} Allowed here: {', '.join(sorted(allowed))}."
            )


def check_keys_against_signature(
    section: ml_collections.ConfigDict | None,
    fn: Callable,
    where: str,
    exclude: Iterable[str] = (),
) -> None:
    """Checks `section`'s keys are keyword parameters of `fn` (or a dataclass's fields)."""
    if section is None:
        return
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = [n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    check_keys(section, [a for a in allowed if a not in set(exclude)], where)


def check_schema(
    config: ml_collections.ConfigDict,
    schema: ml_collections.ConfigDict,
    where: str = "",
    free_sections: Iterable[str] = (),
) -> None:
    """Checks every key of `config` exists in `schema`, recursing into sub-dicts.

    Sections named in `free_sections` (full dotted paths) are checked elsewhere, by
    whatever consumes them.
    """
    free = set(free_sections)
    check_keys(config, schema.keys(), where)
    for key in config.keys():
        path = f"{where}.{key}" if where else key
        if path in free:
            continue
        value, expected = config[key], schema[key]
        if isinstance(value, ml_collections.ConfigDict) and isinstance(
            expected, ml_collections.ConfigDict
        ):
            check_schema(value, expected, path, free)


def with_defaults(
    config: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict
) -> ml_collections.ConfigDict:
    """A copy of `defaults` updated with `config`: every key the code reads is present."""
    merged = ml_collections.ConfigDict(defaults.to_dict())
    _merge_into(merged, config)
    return merged


def _merge_into(target: ml_collections.ConfigDict, source: ml_collections.ConfigDict) -> None:
    for key in source.keys():
        value = source[key]
        if (
            key in target
            and isinstance(target[key], ml_collections.ConfigDict)
            and isinstance(value, ml_collections.ConfigDict)
        ):
            _merge_into(target[key], value)
        else:
            with target.unlocked():
                target[key] = value
