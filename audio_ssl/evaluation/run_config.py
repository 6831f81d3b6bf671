"""The config of a cross-validation run: loading the YAML, resolving the paths it names, its fingerprint (what
makes two runs the same run), the number of folds of its dataset, and ``--set`` overrides.

A config with no top-level ``pipeline:`` key is a plain Lightning CLI YAML; a pipeline config names other
YAMLs (``pretrain: simclr.yaml``), relative to its own folder. A stage may name a recipe and its overlays
(``pretrain: [simclr.yaml, cpu/simclr.yaml]``: consecutive ``--config`` arguments, later values winning), and
``size: cpu`` adds each stage recipe's size overlay ``<recipe folder>/cpu/<recipe file>`` (:func:`stage_configs`).
``audio-ssl cv --pipeline-set KEY=VALUE`` sets a pipeline key from the command line (:func:`apply_pipeline_set`).
"""

from __future__ import annotations

import hashlib
import json
import os
import pkgutil
from collections.abc import Sequence
from pathlib import Path

import yaml


def load_config(path: str | os.PathLike) -> dict:
    """Parse a YAML config; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(config).__name__}")
    return config


def resolve_path(config: dict, key: str, config_path: Path | None, required: bool = True,
                 source: str | None = None) -> Path | None:
    """``config[key]`` as an existing file, relative to the folder of ``config_path`` (the file the config came
    from; ``None``: the working directory). Errors name ``source`` (default: ``config_path``)."""
    value = config.get(key)
    source = source or (str(config_path) if config_path is not None else "<config>")
    if value is None:
        if required:
            raise ValueError(f"{source}: the pipeline needs a '{key}:' entry (a path to a Lightning YAML)")
        return None
    if not isinstance(value, str):
        raise ValueError(f"{source}: '{key}' must be a path string, got {value!r}")
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = (Path(config_path).parent if config_path is not None else Path.cwd()) / path
    if not path.is_file():
        raise FileNotFoundError(f"{source}: '{key}: {value}' points to {path}, which does not exist")
    return path.resolve()


def size_overlay(recipe: Path, size: str) -> Path:
    """The size overlay of a Lightning recipe: ``experiments/simclr.yaml`` -> ``experiments/<size>/simclr.yaml``."""
    return recipe.parent / size / recipe.name


def stage_configs(config: dict, key: str, config_path: Path | None, required: bool = True,
                  source: str | None = None) -> list[Path]:
    """The Lightning YAMLs of a pipeline stage, in ``--config`` order: ``config[key]`` (one path or a list: a recipe
    then overlays, relative to the folder of ``config_path``), then, with ``size: NAME``, the recipe's size overlay
    (:func:`size_overlay`) unless the list already names it. ``[]`` when the key is absent and not ``required``.
    Raises ValueError/FileNotFoundError naming ``source`` (default: the file), the key and the value."""
    source = source or (str(config_path) if config_path is not None else "<config>")
    value = config.get(key)
    if value is None and not required:
        return []
    items = value if isinstance(value, list) else [value]
    if value is None or not items or not all(isinstance(v, str) for v in items):
        raise ValueError(f"{source}: '{key}' must be a path to a Lightning YAML or a list of them (a recipe, then "
                         f"overlays), got {value!r}")
    paths = [resolve_path({key: item}, key, config_path, source=source) for item in items]
    size = config.get("size")
    if size is not None:
        if not isinstance(size, str) or not size or "/" in size:
            raise ValueError(f"{source}: 'size' must be the name of a size folder such as cpu, got {size!r}")
        overlay = size_overlay(paths[0], size)
        if not overlay.is_file():
            raise FileNotFoundError(f"{source}: size: {size} needs the overlay {overlay} for {key}: {paths[0].name}, "
                                    "which does not exist")
        if overlay.resolve() not in paths:
            paths.append(overlay.resolve())
    return paths


def apply_pipeline_set(config: dict, items: Sequence[str], allowed: set[str], source: str) -> dict:
    """A copy of a pipeline config with ``KEY=VALUE`` items (``audio-ssl cv --pipeline-set``) set; each value is
    read as YAML (``true``, ``3``, ``[a.yaml, b.yaml]``). Raises ValueError naming the item for a malformed one or
    a key outside ``allowed`` (the pipeline's keys)."""
    import copy

    config = copy.deepcopy(config)
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--pipeline-set {item!r}: expected KEY=VALUE, e.g. --pipeline-set transductive=true")
        if key not in allowed:
            raise ValueError(f"--pipeline-set {item!r}: unknown key {key!r} for {source} (pipeline "
                             f"{config.get('pipeline')}); allowed: {sorted(allowed - {'pipeline'})}")
        try:
            config[key] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as err:
            raise ValueError(f"--pipeline-set {item!r}: the value is not valid YAML: {err}") from err
    return config


def referenced_configs(config: dict, base: Path) -> dict[str, Path]:
    """Entries of a pipeline config that name an existing YAML file (``pretrain``, ``probe``, ...; a list entry
    gives ``pretrain[1]``...), with the ``size`` overlays of the stage recipes (``pretrain+size``)."""
    found = {}
    for key, value in config.items():
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            if isinstance(item, str) and item.endswith((".yaml", ".yml")):
                path = Path(item).expanduser()
                path = path if path.is_absolute() else base.parent / path
                if path.is_file():
                    found[key if not isinstance(value, list) else f"{key}[{i}]"] = path.resolve()
                    if i == 0 and isinstance(config.get("size"), str) and config["size"]:
                        overlay = size_overlay(path, config["size"])
                        if overlay.is_file():
                            found[f"{key}+size"] = overlay.resolve()
    return found


def config_fingerprint(config_path: Path, overrides: Sequence[str], config: dict | None = None,
                       overlays: Sequence[Path] = ()) -> str:
    """Hash of the parsed config (``config``: as modified by ``--pipeline-set``; default: the file's), every YAML
    it references, the stacked ``overlays`` and the overrides (comments do not count)."""
    config = load_config(config_path) if config is None else config
    parts = {"config": config, "overrides": list(overrides)}
    if overlays:
        parts["overlays"] = [load_config(path) for path in overlays]
    for key, path in sorted(referenced_configs(config, config_path).items()):
        parts[f"ref:{key}"] = load_config(path)
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def infer_num_folds(config: dict, config_path: Path) -> int:
    """Folds of the data module a config (or a YAML it references) names by ``data.class_path``."""
    data = config.get("data")
    if isinstance(data, dict) and isinstance(data.get("class_path"), str):
        try:
            cls = pkgutil.resolve_name(data["class_path"])
        except (ImportError, AttributeError, ValueError) as err:
            raise ValueError(f"{config_path}: data.class_path {data['class_path']!r} cannot be imported: {err}") from err
        if getattr(cls, "num_folds", 0):
            return int(cls.num_folds)
    for path in referenced_configs(config, config_path).values():
        try:
            return infer_num_folds(load_config(path), path)
        except ValueError:
            continue
    raise ValueError(f"{config_path}: cannot tell the number of folds (no data.class_path here or in the YAMLs it "
                     "references); pass --folds")


def parse_set_overrides(items: Sequence[str]) -> list[str]:
    """``["trainer.max_epochs=3"]`` -> ``["--trainer.max_epochs", "3"]``."""
    args = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: expected key=value, e.g. --set trainer.max_epochs=3")
        args += [f"--{key.strip().lstrip('-')}", value]
    return args


def apply_set_overrides(config: dict, overrides: Sequence[str], source: str = "<config>") -> dict:
    """A copy of a pipeline config with ``audio-ssl cv --set KEY=VALUE`` overrides applied, for pipelines that read
    their own config rather than running the Lightning CLI.

    ``overrides`` is what :func:`parse_set_overrides` returns (``["--data.init_args.data_dir", "DIR",
    "--max_clips", "20"]``; ``--key=value`` items are accepted too). A dotted key sets a nested entry (missing
    mappings are created); values are read as YAML (``20`` -> int, ``null`` -> None, ``[1, 2]`` -> list, text
    stays text). Raises ``ValueError`` naming ``source`` for a key without a value, or a key whose parent is not
    a mapping.
    """
    import copy

    config = copy.deepcopy(config)
    items = list(overrides)
    i = 0
    while i < len(items):
        arg = str(items[i])
        if not arg.startswith("--"):
            raise ValueError(f"{source}: override {arg!r} is not a --key (expected --key value or key=value pairs)")
        key, sep, value = arg[2:].partition("=")
        if not sep:
            if i + 1 >= len(items):
                raise ValueError(f"{source}: override --{key} has no value")
            value, i = str(items[i + 1]), i + 1
        i += 1
        parts = key.split(".")
        if not all(parts):
            raise ValueError(f"{source}: override key {key!r} is not a dotted key such as data.init_args.data_dir")
        node = config
        for depth, part in enumerate(parts[:-1]):
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ValueError(f"{source}: cannot set {key}: {'.'.join(parts[:depth + 1])} is not a mapping")
        try:
            node[parts[-1]] = yaml.safe_load(value)
        except yaml.YAMLError:
            node[parts[-1]] = value
    return config


def wandb_project(config: dict) -> str:
    """The W&B project named by a Lightning YAML's WandbLogger, else ``audio-ssl``."""
    loggers = (config.get("trainer") or {}).get("logger")
    for spec in loggers if isinstance(loggers, list) else [loggers]:
        if isinstance(spec, dict) and str(spec.get("class_path", "")).endswith("WandbLogger"):
            project = (spec.get("init_args") or {}).get("project")
            if project:
                return str(project)
    return "audio-ssl"


def project_for(config: dict, config_path: Path) -> str:
    """W&B project of a run: from the config's trainer section, else from the first referenced YAML that has one."""
    if "trainer" in config:
        return wandb_project(config)
    for path in referenced_configs(config, config_path).values():
        sub = load_config(path)
        if "trainer" in sub:
            return wandb_project(sub)
    return "audio-ssl"
