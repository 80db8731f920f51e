"""Configs: YAML files (with ``extends:``) + dotted CLI overrides → typed dataclasses.

Every module declares a ``Config`` dataclass. A YAML section fills it; an unknown key, a value of the
wrong type or an unknown ``*_type`` name raises :class:`ConfigError` with one line naming the
offending key and what would be accepted, before any work starts.

A part's options belong to its type, so that files and overrides compose:
- a layer (a file over the files it extends, an override over what came before) that switches
  ``X_type`` to another type starts ``X`` afresh: the options written below it were for the old type;
- inside ``X``, a block keyed by a registered name of X's family (``renderer: {nerf-volume-renderer:
  {num_samples_per_ray: 512}}``) applies only when that type is chosen, so a profile can hold options
  for a type that a run may or may not use. Within one layer the keyed block outranks the plain
  options; a later layer's plain option replaces what earlier layers' keyed blocks set for it, so
  ``system.guidance.max_step_percent=0.2`` on the command line wins over a file's ``csm:`` block.
"""
from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from threestudio_like import registry
from threestudio_like.utils.checks import BadValue, check_at_least, check_between, check_file_name, shorten

T = TypeVar("T")


class ConfigError(ValueError):
    """A user mistake in a config file or override; its message is one line."""


def check_choice(value: Any, choices: Sequence[Any], key: str) -> None:
    """Raise ``ValueError`` when ``value`` is not one of ``choices`` (used in ``__post_init__``)."""
    if value not in choices:
        raise ValueError(f"{key}={value!r} is not accepted; use one of {', '.join(map(str, choices))}")


# --------------------------------------------------------------------------------------------------
# Reading YAML
# --------------------------------------------------------------------------------------------------
def load_yaml(path: str | os.PathLike, chain: tuple[Path, ...] = ()) -> DictConfig:
    """Read a YAML config, merging the file(s) named by its ``extends:`` key underneath it.

    ``extends`` is a path (or list of paths) relative to the file that names it; ``chain`` holds the
    files that extend this one, so that a cycle is reported as one (not as a recursion error).
    """
    path = Path(path)
    if path.resolve() in chain:
        cycle = " → ".join(str(p) for p in (*chain[chain.index(path.resolve()):], path.resolve()))
        raise ConfigError(f"config files extend each other in a cycle: {cycle}; remove one of these extends:")
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; pass an existing YAML, e.g. configs/sds-nerf.yaml")
    try:
        node = OmegaConf.load(path)
    except Exception as error:  # yaml.YAMLError and friends: keep the first line only
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(node, DictConfig):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
    parents = node.pop("extends", None)
    if parents is None:
        return node
    parents = [parents] if isinstance(parents, str) else list(parents)
    merged = OmegaConf.create()
    for parent in parents:
        merged = merge_layer(merged, load_yaml(path.parent / parent, (*chain, path.resolve())))
    return merge_layer(merged, node)


def merge_layer(lower: DictConfig, upper: DictConfig) -> DictConfig:
    """``upper`` merged over ``lower``, except that where ``upper`` switches a part's ``X_type``,
    ``lower``'s options of ``X`` (those of the old type) are dropped first; type-keyed blocks stay.
    A plain option that ``upper`` sets also replaces what ``lower``'s type-keyed blocks set for it."""
    lower = lower.copy()
    drop_switched_options(lower, upper)
    drop_overridden_keyed_options(lower, upper)
    return OmegaConf.merge(lower, upper)


def drop_switched_options(lower: DictConfig, upper: DictConfig) -> None:
    """In place: remove ``lower.X``'s plain options wherever ``upper`` sets ``X_type`` to another type."""
    for key in upper:
        if not isinstance(key, str) or key not in lower:
            continue
        part = key[: -len("_type")]
        if key.endswith("_type") and part in registry.FAMILIES and lower[key] != upper[key]:
            options = lower.get(part)
            if isinstance(options, DictConfig):
                known = set(registry.names(part))
                lower[part] = {name: block for name, block in options.items() if name in known}
        elif isinstance(upper[key], DictConfig) and isinstance(lower[key], DictConfig):
            drop_switched_options(lower[key], upper[key])


def drop_overridden_keyed_options(lower: DictConfig, upper: DictConfig) -> None:
    """In place: where ``upper.X`` sets a plain option of part ``X``, remove that option from the
    blocks of ``lower.X`` keyed by X's type names. Without this a keyed block of an earlier layer
    (``guidance: {csm: {max_step_percent: 0.5}}``) would outrank a later plain override
    (``system.guidance.max_step_percent=0.2``) and the override would be ignored."""
    for key in upper:
        if not isinstance(key, str) or key not in lower:
            continue
        below, above = lower[key], upper[key]
        if not (isinstance(below, DictConfig) and isinstance(above, DictConfig)):
            continue
        if key in registry.FAMILIES:
            known = set(registry.names(key))
            plain = [option for option in above if option not in known]
            for name, block in below.items():
                if name in known and isinstance(block, DictConfig):
                    for option in plain:
                        block.pop(option, None)
        drop_overridden_keyed_options(below, above)


def apply_overrides(node: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """Apply ``a.b.c=value`` overrides in order (values parsed as YAML, like threestudio's CLI).

    In order, so that ``system.prior=null system.prior.dtype=bfloat16`` first drops the keys a base
    config set for another prior type, then sets one of the new type's.
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value, e.g. trainer.max_steps=100")
    try:
        for item in overrides:
            node = merge_layer(node, OmegaConf.from_dotlist([item]))
        return node
    except OmegaConfBaseException as error:
        raise ConfigError(f"bad override: {str(error).splitlines()[0]}") from None


# --------------------------------------------------------------------------------------------------
# Typed parsing
# --------------------------------------------------------------------------------------------------
def parse_structured(schema: type[T], values: Any, where: str) -> T:
    """Fill dataclass ``schema`` from ``values`` (a mapping); one-line :class:`ConfigError` on mistakes."""
    if values is None:
        values = {}
    if isinstance(values, schema):
        return values
    if dataclasses.is_dataclass(values):
        values = dataclasses.asdict(values)
    if not isinstance(values, (dict, DictConfig)):
        raise ConfigError(f"config error at {where}: expected a mapping of {schema.__name__} keys, got {values!r}")
    try:
        node = OmegaConf.merge(OmegaConf.structured(schema), values)
        parsed = OmegaConf.to_object(node)  # runs __post_init__ checks
        bad = find_non_finite(parsed, "")
        if bad is not None:
            raise BadValue(*bad, "use a finite number (no config value may be NaN or infinite)")
        return parsed
    except ConfigKeyError as error:
        key = join_key(where, str(error.full_key))
        if key in MOVED_KEYS:
            raise ConfigError(f"config key {key!r} has moved: use {MOVED_KEYS[key]}") from None
        accepted = ", ".join(f.name for f in dataclasses.fields(schema_at(schema, str(error.full_key))))
        raise ConfigError(f"unknown config key {key!r}; accepted keys here: {accepted}") from None
    except OmegaConfBaseException as error:
        key = join_key(where, str(error.full_key))
        raise ConfigError(f"config error at {key!r}: {str(error).splitlines()[0]}") from None
    except (ValueError, TypeError) as error:
        where = join_key(where, raised_in(schema, error))
        if isinstance(error, BadValue):
            raise ConfigError(f"config error: {join_key(where, str(error))}") from None
        raise ConfigError(f"config error at {where!r}: {shorten(str(error).splitlines()[0], 300)}") from None


# keys that an earlier layout of the configs had, and where they live now (old runs' parsed.yaml)
MOVED_KEYS = {
    "system.prompt_processor.use_perp_neg": "system.guidance.use_perp_neg (Perp-Neg's settings live with the guidance)",
}


def schema_at(schema: type, dotted: str) -> type:
    """The dataclass that holds the last part of ``dotted`` inside ``schema`` (for "accepted keys here")."""
    for part in dotted.split(".")[:-1]:
        fields = {f.name: f for f in dataclasses.fields(schema)}
        inner = fields[part].type if part in fields else None
        inner = typing_hints(schema).get(part, inner)
        if not (isinstance(inner, type) and dataclasses.is_dataclass(inner)):
            break
        schema = inner
    return schema


def typing_hints(schema: type) -> dict:
    try:
        return typing.get_type_hints(schema)
    except Exception:  # unresolvable annotations: fall back to the field's own type
        return {}


def find_non_finite(value: Any, key: str) -> Optional[tuple[str, float]]:
    """(dotted key, value) of the first NaN or inf inside a parsed config (dataclasses, lists, mappings),
    or None: NaN compares false with every bound, so it would slip through ``x < 0``-style checks,
    and inf overflows wherever a value becomes a size."""
    if isinstance(value, float) and not math.isfinite(value):
        return key, value
    if dataclasses.is_dataclass(value):
        children = ((f.name, getattr(value, f.name)) for f in dataclasses.fields(value))
    elif isinstance(value, dict):
        children = ((str(k), v) for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        children = (("", v) for v in value)
    else:
        return None
    for name, child in children:
        found = find_non_finite(child, join_key(key, name))
        if found is not None:
            return found
    return None


def raised_in(schema: type, error: BaseException) -> str:
    """The dotted path, inside ``schema``, of the nested Config whose ``__post_init__`` raised ``error``
    (``exporter`` for an ExportConfig inside TextTo3DConfig); "" for ``schema`` itself or when unknown."""
    tb, owner = error.__traceback__, None
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "__post_init__" and dataclasses.is_dataclass(frame.f_locals.get("self")):
            owner = type(frame.f_locals["self"])
        tb = tb.tb_next
    return "" if owner is None else (dataclass_path(schema, owner) or "")


def dataclass_path(schema: type, target: type, prefix: str = "") -> Optional[str]:
    """Where dataclass ``target`` sits among ``schema``'s (nested) dataclass fields, breadth first."""
    if schema is target:
        return prefix
    try:
        hints = typing.get_type_hints(schema)
    except Exception:  # a forward reference that cannot be resolved: search no deeper
        return None
    for f in dataclasses.fields(schema):
        kind = hints.get(f.name)
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            found = dataclass_path(kind, target, join_key(prefix, f.name))
            if found is not None:
                return found
    return None


def join_key(where: str, key: str) -> str:
    """``system`` + ``guidance`` → ``system.guidance`` (no leading dot at the top level)."""
    return f"{where}.{key}" if where and key else where or key


def resolve_typed(cfg: Any, where: str) -> Any:
    """Replace every ``X`` mapping that has a sibling ``X_type`` by the typed Config of that class.

    Recurses, so a system's geometry, renderer, guidance … are all checked at start-up.
    """
    for f in dataclasses.fields(cfg):
        if not f.name.endswith("_type"):
            continue
        part = f.name[: -len("_type")]
        if not hasattr(cfg, part) or part not in registry.FAMILIES:
            continue
        try:
            cls = registry.lookup(part, getattr(cfg, f.name))
        except registry.UnknownNameError as error:
            raise ConfigError(f"config error at {join_key(where, f.name)}: {error}") from None
        options = options_for_type(part, getattr(cfg, f.name), getattr(cfg, part))
        typed = parse_structured(cls.Config, options, join_key(where, part))
        setattr(cfg, part, resolve_typed(typed, join_key(where, part)))
    return cfg


def options_for_type(family: str, name: str, options: Any) -> Any:
    """A part's options for type ``name``: the plain ones, with the block keyed ``name`` merged over
    them; blocks keyed by the family's other registered names are dropped."""
    if not isinstance(options, (dict, DictConfig)):
        return options
    known = set(registry.names(family))
    plain = {key: value for key, value in options.items() if key not in known}
    chosen = options.get(name)
    if chosen is None:
        return plain
    return OmegaConf.to_container(OmegaConf.merge(plain, chosen))


@dataclass
class TrainerConfig:
    max_steps: int = 1500
    val_check_interval: int = 500  # validation grid every N steps (and at the end)
    checkpoint_interval: int = 500  # checkpoint every N steps (and at the end, and on Ctrl-C)
    log_every_n_steps: int = 10  # rows of metrics.csv
    progress_bar: bool = True
    export_at_end: bool = True
    test_at_end: bool = True  # turntable video at the end of training
    video_fps: int = 30  # turntable frames per second (data.n_test_views frames in all)
    page_at_end: bool = True  # write the run page (page/index.html) at the end of training
    tensorboard: bool = False  # also log scalars and validation images for TensorBoard (pip install -e '.[tensorboard]')

    def __post_init__(self) -> None:
        check_at_least(self, 1, "max_steps", "val_check_interval", "checkpoint_interval", "log_every_n_steps", "video_fps")


@dataclass
class ExperimentConfig:
    name: str = "default"
    tag: str = ""  # defaults to the prompt, made file-name safe
    seed: int = 0
    exp_root_dir: str = "outputs"
    use_timestamp: bool = True
    data_type: str = "random-camera"
    data: Any = field(default_factory=dict)
    system_type: str = "text-to-3d"
    system: Any = field(default_factory=dict)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    # CPU threads for torch; 0 keeps torch's default. One is fastest for this workload of many
    # mid-sized ops on small machines (threads mostly wait on each other)
    cpu_threads: int = 1
    resume: Optional[str] = None  # a checkpoint to continue from (or to validate/test/export)

    def __post_init__(self) -> None:
        # the run folder is exp_root_dir/name/tag: neither part may lead out of exp_root_dir
        check_file_name(self, "name")
        check_file_name(self, "tag", allow_empty=True)
        check_between(self, 0, 2**32 - 1, "seed")  # numpy's seed range
        check_between(self, 0, 1024, "cpu_threads")  # OpenMP aborts when it cannot allocate a huge pool
        if not str(self.exp_root_dir).strip():
            raise BadValue("exp_root_dir", self.exp_root_dir, "use a folder, e.g. outputs")


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """The whole experiment config, typed and checked, from a YAML file and CLI overrides."""
    node = apply_overrides(load_yaml(path), overrides)
    return parse_config(node)


def parse_config(node: Any) -> ExperimentConfig:
    cfg = parse_structured(ExperimentConfig, node, "")
    return resolve_typed(cfg, "")


def to_yaml(cfg: Any) -> str:
    """YAML text of a (typed) config, with every default filled in (saved as configs/parsed.yaml)."""
    return OmegaConf.to_yaml(OmegaConf.create(dataclasses.asdict(cfg)))
