"""Typed configuration: dataclasses loaded from layered YAML with ``key=value`` overrides.

Configs are layered like dinov2's: dataclass defaults, then one or more YAML files, then
command-line ``a.b=value`` overrides. Unknown keys are rejected with the full dotted key and the
list of valid ones, so a typo never silently falls back to a default. The resolved config is a
plain dict (:func:`to_dict`) that is saved with every run and embedded in every checkpoint.

Keys that were renamed or removed stay loadable: a config dataclass lists them in its
``DEPRECATED_KEYS`` class attribute (old dotted key -> :class:`DeprecatedKey`), so old YAML files,
checkpoints and bundles still load, with a :class:`DeprecationWarning` (also logged) that names the
old key and what replaces it. Command-line flags get the same treatment from :func:`rename_legacy_flags`.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import re
import types
import typing
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from backend.errors import ConfigError

T = TypeVar("T")

log = logging.getLogger(__name__)

_MISSING = object()
_LOGGED: set[str] = set()


@dataclasses.dataclass(frozen=True)
class DeprecatedKey:
    """An old config key that still loads, declared in a config dataclass's ``DEPRECATED_KEYS``.

    ``DEPRECATED_KEYS`` maps the old key, dotted and relative to the declaring section (``epochs``
    in the trainer section, ``model.img_size`` in the experiment), to one of these.

    Attributes:
        replacement: The key that replaces it, dotted and relative to the same section; None when
            nothing does (the value is derived by the code).
        moved: A renamed key: its value moves to ``replacement`` unless that is set too (then
            ``replacement`` wins). False: the old value is ignored, ``replacement`` alone decides.
        why: A clause for the message (why the key went).
    """

    replacement: str | None = None
    moved: bool = False
    why: str = ""


def renamed(new: str) -> DeprecatedKey:
    """A key renamed to ``new`` (same section): its value moves there."""
    return DeprecatedKey(replacement=new, moved=True)


def removed(replacement: str | None = None, why: str = "") -> DeprecatedKey:
    """A key that is no longer a setting: its value is ignored; ``replacement`` (if any) decides instead."""
    return DeprecatedKey(replacement=replacement, moved=False, why=why)


def warn_deprecated(message: str) -> None:
    """Emit ``message`` as a :class:`DeprecationWarning` and log it (once per process) for CLI users."""
    warnings.warn(message, DeprecationWarning, stacklevel=3)
    if message not in _LOGGED:
        _LOGGED.add(message)
        log.warning("%s", message)


def _get_path(data: dict[str, Any], path: str) -> Any:
    node: Any = data
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _set_path(data: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def _pop_path(data: dict[str, Any], path: str) -> Any:
    *parents, leaf = path.split(".")
    node: Any = data
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict) or leaf not in node:
        return _MISSING
    return node.pop(leaf)


def _apply_deprecations(cls: type, data: dict[str, Any], prefix: str, renames_only: bool = False) -> dict[str, Any]:
    """``data`` (copied when touched) with the deprecated keys of ``cls`` moved or dropped, each with a warning.

    With ``renames_only``, removed keys stay for the final :func:`from_dict` to drop, where it can
    name a disagreement with the key that replaces them.
    """
    rules: dict[str, DeprecatedKey] = getattr(cls, "DEPRECATED_KEYS", None) or {}
    hits = [old for old in rules if _get_path(data, old) is not _MISSING
            and not (renames_only and not (rules[old].moved and rules[old].replacement))]
    if not hits:
        return data
    data = copy.deepcopy(data)
    for old in hits:
        rule = rules[old]
        value = _pop_path(data, old)
        new = rule.replacement
        current = _get_path(data, new) if new else _MISSING
        message = f"config key '{prefix}{old}' is deprecated"
        if rule.moved and new:
            message += f": use '{prefix}{new}' instead"
            if current is _MISSING:
                _set_path(data, new, value)
            elif current != value:
                message += f"; both are set, so '{prefix}{new}' ({current!r}) is used and {value!r} ignored"
        else:
            message += " and ignored"
            if new:
                message += f": '{prefix}{new}' replaces it"
            if rule.why:
                message += f" ({rule.why})"
            if new and current is not _MISSING and current != value:
                message += f"; its value {value!r} differs from '{prefix}{new}' ({current!r}), which is used"
        warn_deprecated(message)
    return data


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    """Return (inner type, allows None) for ``X | None`` / ``Optional[X]``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], len(args) != len(typing.get_args(tp))
    return tp, False


def _count_or_fraction(value: Any, key: str) -> int | float:
    """An ``int | float`` value (e.g. Lightning's ``limit_train_batches``): ``1`` stays the count 1, ``1.0`` is 100%."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"config key '{key}' must be a count or a fraction, got {value!r}")
    if isinstance(value, str):
        for parse in (int, float):
            try:
                return parse(value)
            except ValueError:
                continue
        raise ConfigError(f"config key '{key}' must be a count or a fraction, got {value!r}")
    return value


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML/override value to the annotated type, or raise naming the key."""
    inner, optional = _strip_optional(tp)
    if value is None:
        if optional or inner is Any:
            return None
        raise ConfigError(f"config key '{key}' may not be null (expected {getattr(inner, '__name__', inner)})")
    if _is_dataclass_type(inner):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return _from_dict(inner, value, prefix=f"{key}.")
    origin = typing.get_origin(inner)
    if inner is Any:
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        args = typing.get_args(inner)
        fixed = origin is tuple and bool(args) and Ellipsis not in args  # tuple[float, float]: exactly two
        if fixed and len(value) != len(args):
            raise ConfigError(f"config key '{key}' must hold {len(args)} values, got {len(value)}: {list(value)!r}")
        item_types = list(args) if fixed else [args[0] if args else Any] * len(value)
        items = [_coerce(v, tp, f"{key}[{i}]") for i, (v, tp) in enumerate(zip(value, item_types, strict=True))]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return dict(value)
    if origin is typing.Literal:
        allowed = typing.get_args(inner)
        if value not in allowed:
            raise ConfigError(f"config key '{key}' must be one of {list(allowed)}, got {value!r}")
        return value
    if inner is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
    if origin in (typing.Union, types.UnionType) and set(typing.get_args(inner)) == {int, float}:
        return _count_or_fraction(value, key)
    if inner in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
        try:
            number = inner(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key '{key}' must be {inner.__name__}, got {value!r}") from None
        if inner is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
        return number
    if inner is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
        return str(value)
    return value


def _from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    data = _apply_deprecations(cls, data, prefix)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        valid = ", ".join(sorted(fields))
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}'; valid keys here: {valid}")
    kwargs = {name: _coerce(value, hints[name], f"{prefix}{name}") for name, value in data.items()}
    try:
        obj = cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"config section '{prefix.rstrip('.') or cls.__name__}': {err}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def from_dict(cls: type[T], data: dict[str, Any] | None) -> T:
    """Build a config dataclass from a nested dict, rejecting unknown keys and wrong types.

    Args:
        cls: The dataclass type.
        data: Nested mapping (e.g. parsed YAML, or a checkpoint's embedded config).

    Keys listed in a section's ``DEPRECATED_KEYS`` are renamed or dropped with a
    :class:`DeprecationWarning` naming the old key and what replaces it (``data`` is never changed).

    Returns:
        The config instance; its ``validate()`` hook, if any, has run.

    Raises:
        ConfigError: On an unknown key (named with its dotted path), a wrong type or a bad value.
    """
    return _from_dict(cls, dict(data or {}))


def upgrade_keys(cls: type, data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """One config layer with its renamed keys moved to their new names (each with a warning), not yet typed.

    Apply it to each layer before merging (:func:`merge_layers`), so that an old key in a later layer
    (``output_dir=...`` on the command line) still beats the new key of an earlier one (``log_dir``
    in the base YAML), as it did before the rename. Removed keys are left for :func:`from_dict`.
    ``data`` is never changed.
    """
    data = _apply_deprecations(cls, data, prefix, renames_only=True)
    hints = typing.get_type_hints(cls)
    out = dict(data)
    for name, value in data.items():
        inner, _ = _strip_optional(hints.get(name, Any))
        if _is_dataclass_type(inner) and isinstance(value, dict):
            out[name] = upgrade_keys(inner, value, prefix=f"{prefix}{name}.")
    return out


def check_layer_keys(cls: type, layer: dict[str, Any], source: str | Path) -> None:
    """Refuse a config file with a key ``cls`` does not have, or a value of the wrong type, naming the file.

    Once layers are merged, a key no longer says which file it came from; checking each file on
    its own first does. Unknown keys and wrong types are judged here (each depends on the value
    alone); rules between settings wait for the merged config, since a layer is partial.

    Raises:
        ConfigError: ``<file>: unknown config key 'a.b'; valid keys here: ...`` or
            ``<file>: config key 'a.b' must be int, got 'abc'``.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # warned once, when the merged config loads
        try:
            _from_dict(cls, dict(layer))
        except ConfigError as err:
            if str(err).startswith(("unknown config key", "config key '")):
                raise ConfigError(f"{source}: {err}") from None


def merge_layers(layers: Iterable[dict[str, Any]], cls: type | None = None) -> dict[str, Any]:
    """Deep-merge config layers, last wins; with ``cls``, each layer's deprecated keys are upgraded first."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = deep_merge(merged, upgrade_keys(cls, layer) if cls is not None else layer)
    return merged


def to_dict(cfg: Any) -> dict[str, Any]:
    """Return the config as plain nested dicts/lists (YAML- and checkpoint-safe)."""
    def convert(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, Path):
            return str(value)
        return value

    return convert(cfg)


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Merge ``update`` into a copy of ``base``; nested mappings merge, other values replace.

    An explicit empty mapping replaces (``model.backbone_kwargs={}`` clears the keyword arguments an
    earlier layer set); merging it would change nothing, which is never what was meant.
    """
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and value and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


class _OverrideLoader(yaml.SafeLoader):
    """YAML for ``key=value`` overrides, with YAML 1.2's plain scalars.

    ``0123`` is not octal 83 and ``off``/``yes`` are not booleans, so ``experiment_name=0123`` or
    ``data.img_dir=off`` mean what they say.
    """


_REPLACED_TAGS = ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int")
_OverrideLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _REPLACED_TAGS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_OverrideLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                      list("tTfF"))
_OverrideLoader.add_implicit_resolver("tag:yaml.org,2002:int",
                                      re.compile(r"^(?:[-+]?(?:0|[1-9][0-9_]*)|0x[0-9a-fA-F]+)$"), list("-+0123456789"))


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=[x, y]"]`` into a nested dict; values are parsed as YAML 1.2 scalars."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value (e.g. data.img_size=224)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override '{item}' has an empty key")
        try:
            value = yaml.load(raw, Loader=_OverrideLoader) if raw.strip() else None  # a SafeLoader
        except yaml.YAMLError:
            value = raw
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' conflicts with an earlier override of '{part}'")
        node[parts[-1]] = value
    return nested


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; an empty file is an empty mapping; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def load_config(
    cls: type[T],
    files: list[str | Path] | tuple[str | Path, ...] = (),
    overrides: list[str] | tuple[str, ...] = (),
) -> T:
    """Load a config: dataclass defaults <- each YAML file in order <- ``key=value`` overrides.

    Raises:
        ConfigError: Naming the file or the dotted key that is wrong.
    """
    layers = [read_yaml(file) for file in files]
    for file, layer in zip(files, layers, strict=True):
        check_layer_keys(cls, layer, file)
    layers.append(parse_overrides(list(overrides)))
    return from_dict(cls, merge_layers(layers, cls))


def _network_keys(cls: type | None) -> set[str] | None:
    """The keys of ``cls``'s model section that describe the network (None: all of them).

    The section's own dataclass may extend a base one (BYOL's model config adds its heads to the
    supervised model config): the base's fields are the network's.
    """
    model_type = typing.get_type_hints(cls).get("model") if cls is not None else None
    if not _is_dataclass_type(model_type):
        return None
    bases = [b for b in model_type.__mro__[1:] if _is_dataclass_type(b)]
    return {f.name for f in dataclasses.fields(bases[0] if bases else model_type)}


def cli_layers(
    files: list[str] | tuple[str, ...] = (),
    model_file: str | None = None,
    flags: dict[str, Any] | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    cls: type | None = None,
) -> dict[str, Any]:
    """The merged config tree of a training CLI, before typing.

    Layers, last wins: each ``--config`` YAML, the ``--model_cfg`` YAML as the ``model`` section
    (replacing the config files' own model section, not merged into it),
    flag values given as ``{"dotted.key": value}`` (None = flag not given), then ``key=value``
    overrides. With ``cls`` (the config dataclass), old keys are upgraded layer by layer
    (:func:`upgrade_keys`), so a later layer wins whichever spelling it uses.
    """
    layers = [read_yaml(file) for file in files]
    sources = list(files)
    if model_file:
        # A model file is a whole network: it replaces what the --config files said of the network
        # rather than merging into it (a ResNet-50 must not inherit a MobileNet's padding or start
        # weights). Settings of the model section that are not the network's (BYOL's projector and
        # predictor sizes) stay.
        network = _network_keys(cls)
        layers = [{**layer, "model": {k: v for k, v in layer["model"].items() if network and k not in network}}
                  if isinstance(layer.get("model"), dict) else layer for layer in layers]
        layers.append({"model": read_yaml(model_file)})
        sources.append(model_file)
    if cls is not None:
        for source, layer in zip(sources, layers, strict=True):
            check_layer_keys(cls, layer, source)
    flag_layer: dict[str, Any] = {}
    for key, value in (flags or {}).items():
        if value is None:
            continue
        node = flag_layer
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    layers += [flag_layer, parse_overrides(list(overrides))]
    return merge_layers(layers, cls)


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML (the file every run keeps beside its checkpoints)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
    return path


def rename_legacy_flags(argv: list[str], known: Iterable[str], renames: dict[str, str] | None = None) -> list[str]:
    """``argv`` with old spellings of command-line flags replaced by the current ones, each with a warning.

    Args:
        argv: Command-line arguments (``--flag value``, ``--flag=value``, positionals; ``--`` ends flags).
        known: The parser's current option strings.
        renames: Old flag -> current flag (``--epochs`` -> ``--max_epochs``). Besides these, a
            ``--some-flag`` that is not a flag itself but whose underscore spelling ``--some_flag`` is,
            counts as that flag.

    Returns:
        The rewritten arguments (a new list).
    """
    known = set(known)
    renames = renames or {}
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + list(argv[i:])
        flag, sep, value = arg.partition("=")
        new = None
        if flag.startswith("--") and flag not in known:
            new = renames.get(flag)
            if new is None and "-" in flag[2:]:
                underscored = "--" + flag[2:].replace("-", "_")
                new = renames.get(underscored, underscored if underscored in known else None)
        if new is None:
            out.append(arg)
            continue
        warn_deprecated(f"command-line flag '{flag}' is deprecated: use '{new}'")
        out.append(new + sep + value)
    return out
