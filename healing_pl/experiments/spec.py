"""The experiment spec: one YAML that is both a ``healing-pl grid`` and a W&B sweep.

    name: table4-mnist5k            # default: the file's name
    config: configs/mnist5k.yaml    # the base config of every run
    command: heal                   # heal (default), unlearn or stream
    seeds: [0, 1, 2]                # optional: one baseline and one grid per seed
    fit: {trainer.max_epochs: 10}   # overrides of the baseline(s)
    heal: {adversary.budget: 25}    # overrides shared by every run of the command
    axes:                           # every combination of one entry per axis is one run
      unlearn:
        - {unlearn: Fisher, unlearn.alpha: 8.0e-6}
        - {unlearn: Influence, unlearn.damping: 0.001}
      twins: [{twins.metric: null}, {twins.metric: RawL2}]

A method family is chosen by class (``unlearn: Fisher``, ``adversary: ClassSelector``, ``twins.metric:
RawL2``; null: no twins) and its knobs follow as ``unlearn.<knob>``; the class always goes first on the
command line, whatever the order in the file. A file with a key of the old flat options
(``unlearn.method``, ``adversary.selector``, ...) stops with one sentence naming the new key.

Without ``seeds`` every run keeps its config's seeds and the runs sit in ``<out>/<run>``; with
``seeds`` each run gets ``--seed_everything``, ``--data.seed`` (and ``--unlearn.seed``,
``--twins.seed`` where the command has them) set to the seed, and with more than one seed the
runs of seed s sit in ``<out>/seed-<s>/<run>``. Every check here runs before any file is written.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass

import yaml

COMMANDS = ("heal", "unlearn", "stream")
#: the options a seed sets, per subcommand (tests/test_grid.py checks them against the CLI's parser)
SEED_OPTIONS = {
    "fit": ("seed_everything", "data.seed"),
    "heal": ("seed_everything", "data.seed", "unlearn.seed", "twins.seed"),
    "unlearn": ("seed_everything", "data.seed", "unlearn.seed"),
    "stream": ("seed_everything", "data.seed", "unlearn.seed"),
}


@dataclass(frozen=True)
class Run:
    """One command of a grid: the baseline of a seed, or one cell of the axes."""

    name: str  # folder under the grid's output folder, e.g. "heal-fisher-none" or "seed-1/baseline"
    subcommand: str
    run_dir: str
    args: tuple[str, ...]  # everything after the subcommand
    seed: int | None = None
    baseline: str | None = None  # run_dir of the baseline this run starts from (None: it is a baseline)

    @property
    def argv(self) -> list[str]:
        return [self.subcommand, *self.args]


def value_text(value) -> str:
    """An option's value as the CLI reads it: JSON for lists, dicts, booleans and null, else ``str``."""
    if isinstance(value, (list, dict, bool)) or value is None:
        return json.dumps(value)
    return str(value)


def overrides(pairs: dict | None) -> list[str]:
    """``--key=value`` options; a chosen class (``unlearn``, ``twins.metric``) before its knobs (``unlearn.alpha``),
    since the CLI drops the knobs given before a class is chosen."""
    pairs = pairs or {}
    depth = {key: sum(other.startswith(key + ".") for other in pairs) for key in pairs}
    ordered = sorted(pairs, key=lambda key: -depth[key] if depth[key] else 0)
    return [f"--{key}={value_text(pairs[key])}" for key in ordered]


def check_renamed(path: str, where: str, pairs: dict) -> None:
    """Stop with one sentence when ``pairs`` use an option that the method-family classes replaced."""
    from healing_pl.phases.config import RENAMED_KEYS, RENAMED_VALUES

    for key, value in pairs.items():
        if key in RENAMED_KEYS:
            raise ValueError(f"'{key}' in '{where}' of the grid '{path}' is gone; use {RENAMED_KEYS[key]}.")
        old = RENAMED_VALUES.get(key, {})
        if isinstance(value, str) and value in old:
            raise ValueError(
                f"{key}: {value} in '{where}' of the grid '{path}' names the class the old way; "
                f"use {key}: {old[value]}."
            )


#: options a grid chooses itself for every run
GRID_OWNED = ("run_dir", "ckpt_path", "config")


def check_overrides(path: str, where: str, pairs: dict) -> None:
    """Stop with one sentence at an override a run would refuse: an import path outside the CLI's allowlist
    (:func:`healing_pl.cli.denied_import_path`), or an option the grid sets itself (the run folder)."""
    from healing_pl.cli import denied_import_path, import_sentence

    for key, value in pairs.items():
        if not isinstance(key, str):
            raise ValueError(f"'{where}' of the grid '{path}' has an option that is not a text: {key!r}.")
        if key in GRID_OWNED:
            raise ValueError(f"'{where}' of the grid '{path}' sets {key}, which the grid chooses for every run itself.")
        denied = denied_import_path(value, key)
        if denied:
            raise ValueError(import_sentence(denied, f"{key} in '{where}' of the grid '{path}'"))


def check_folder_name(name: str, what: str) -> None:
    """Stop unless ``name`` is one plain folder name (no separator, not ``.`` or ``..``, no control character)."""
    if (
        not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or name.startswith("-")
        or any(ord(c) < 32 for c in name)
        or len(name.encode()) > 200
    ):
        raise ValueError(
            f"{what} {name[:80]!r} cannot be a folder name: it must be one plain name without '/', '..' or control "
            "characters, under 200 bytes."
        )


def check_inside(out: str, run_dir: str) -> None:
    """Stop unless ``run_dir`` lies inside ``out`` (symbolic links resolved)."""
    root = os.path.realpath(out)
    target = os.path.realpath(run_dir)
    if os.path.commonpath([root, target]) != root:
        raise ValueError(f"the run folder '{run_dir}' would lie outside the grid's output folder '{out}'.")


def load_spec(path: str) -> dict:
    """Read and check a grid spec (every check before any run starts or any file is written)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"grid file '{path}' does not exist.")
    try:
        with open(path) as f:
            spec = yaml.safe_load(f)
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ValueError(f"'{path}' is not valid YAML{at}.") from None
    if not isinstance(spec, dict) or "config" not in spec or "axes" not in spec:
        raise ValueError(f"'{path}' must be a mapping with 'config' and 'axes' keys.")
    command = spec.get("command", "heal")
    if command not in COMMANDS:
        raise ValueError(f"the grid's command must be heal, unlearn or stream, got '{command}'.")
    allowed = ("name", "config", "command", "seeds", "fit", command, "axes")
    unknown = [key for key in spec if key not in allowed]
    if unknown:
        raise ValueError(
            f"unknown key '{unknown[0]}' in the grid '{path}'; a {command} grid has the keys {', '.join(allowed)}."
        )
    if not isinstance(spec["config"], str) or not os.path.isfile(spec["config"]):
        raise FileNotFoundError(f"the grid's config '{spec['config']}' (in '{path}') does not exist.")
    if "name" in spec and (not isinstance(spec["name"], str) or not spec["name"] or "/" in spec["name"]):
        raise ValueError(f"the grid's name must be a non-empty text without '/', got {spec['name']!r}.")
    if "name" in spec:
        check_folder_name(spec["name"], "the grid's name")
    for key in ("fit", command):
        if not isinstance(spec.get(key) or {}, dict):
            raise ValueError(f"the grid's '{key}' overrides must be a mapping of option: value.")
    axes = spec["axes"]
    if not isinstance(axes, dict) or not axes:
        raise ValueError(f"the grid's axes must be a mapping of axis name: list of override mappings, got {axes!r}.")
    for name, values in axes.items():
        if not isinstance(values, list) or not values or not all(isinstance(v, dict) and v for v in values):
            raise ValueError(
                f"the grid's axes entry '{name}' must be a non-empty list of override mappings "
                f"(e.g. [{{twins.metric: RawL2}}]), got {values!r}."
            )
    for where, pairs in [("fit", spec.get("fit") or {}), (command, spec.get(command) or {})] + [
        (f"axes.{name}", entry) for name, values in axes.items() for entry in values
    ]:
        check_renamed(path, where, pairs)
        check_overrides(path, where, pairs)
    if "seeds" in spec:
        seeds = spec["seeds"]
        if (
            not isinstance(seeds, list)
            or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
        ):
            raise ValueError(f"the grid's seeds must be a non-empty list of integers >= 0, got {seeds!r}.")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"the grid's seeds must differ from each other, got {seeds!r}.")
        sets = [("fit", spec.get("fit") or {}), (command, spec.get(command) or {})]
        sets += [(f"axes.{name}", entry) for name, values in axes.items() for entry in values]
        for where, pairs in sets:
            taken = [key for key in pairs if key in SEED_OPTIONS["heal"]]
            if taken:
                raise ValueError(
                    f"the grid sets {taken[0]} in '{where}', but with 'seeds' the grid sets every seed itself."
                )
    return spec


def grid_name(spec: dict, path: str) -> str:
    return spec.get("name") or os.path.splitext(os.path.basename(path))[0]


def seed_args(subcommand: str, seed: int | None) -> list[str]:
    return [] if seed is None else [f"--{key}={seed}" for key in SEED_OPTIONS[subcommand]]


def _label(combo) -> str:
    return "-".join(
        f"{v:g}" if isinstance(v, float) else "none" if v is None else value_text(v)
        for part in combo
        for v in part.values()
    )


def cells(spec: dict) -> list[tuple[str, dict, tuple[dict, ...]]]:
    """Every cell of the axes: (folder name, the run's overrides: shared then the cell's, the cell's entries)."""
    command = spec.get("command", "heal")
    result = []
    for combo in itertools.product(*spec["axes"].values()):
        merged = dict(spec.get(command) or {})
        for part in combo:
            merged.update(part)
        label = f"{command}-{_label(combo)}"
        check_folder_name(label, "the run name")
        result.append((label, merged, combo))
    return result


def baseline_args(spec: dict, out: str, name: str, seed: int | None) -> list[str]:
    """The baseline's arguments after ``fit`` (also printed in an exported sweep's header)."""
    run_dir = os.path.join(out, *([f"seed-{seed}"] if len(spec.get("seeds") or [None]) > 1 else []), "baseline")
    return ["--config", spec["config"], f"--wandb.group={name}", f"--run_dir={run_dir}"] + [
        *seed_args("fit", seed),
        *overrides(spec.get("fit")),
    ]


def build_runs(spec: dict, out: str, name: str) -> list[Run]:
    """The baseline of every seed, then every run of every seed (the order they start in)."""
    command = spec.get("command", "heal")
    seeds = spec.get("seeds") or [None]
    many = len(seeds) > 1
    common = ["--config", spec["config"], f"--wandb.group={name}"]
    baselines, runs, seen = [], [], set()
    for seed in seeds:
        folder = f"seed-{seed}" if many else ""
        baseline_dir = os.path.join(out, folder, "baseline")
        baselines.append(
            Run(
                os.path.join(folder, "baseline"), "fit", baseline_dir, tuple(baseline_args(spec, out, name, seed)), seed
            )
        )
        ckpt = os.path.join(baseline_dir, "checkpoints", "last.ckpt")
        for label, merged, _ in cells(spec):
            run_dir = os.path.join(out, folder, label)
            check_inside(out, run_dir)
            if run_dir in seen:
                raise ValueError(
                    f"two runs of the grid would share the folder '{run_dir}'; make the axes' values differ."
                )
            seen.add(run_dir)
            args = [*common, f"--ckpt_path={ckpt}", f"--run_dir={run_dir}", *seed_args(command, seed)]
            runs.append(
                Run(os.path.join(folder, label), command, run_dir, (*args, *overrides(merged)), seed, baseline_dir)
            )
    return baselines + runs
