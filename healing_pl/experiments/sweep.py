"""A grid spec as a W&B sweep: ``healing-pl grid SPEC --export-sweep [FILE]``.

The sweep runs the grid's own runs: its command is ``healing-pl grid SPEC --out=OUT --sweep-cell ${args}``,
and the grid maps the agent's parameters back to the grid's run of those parameters (:func:`sweep_run`), which
it runs as ``healing-pl grid`` would (the same command, its baseline first if missing, claimed like any run), in
the grid's folder under the grid's run name: ``healing-pl report OUT`` covers the agents' runs, and a grid run
after the agents finds their runs done.

Each axis becomes one sweep parameter. An axis whose entries set one option becomes that option
(``twins.metric: [null, RawL2]``; a null goes through as the text ``null``); an axis whose entries choose a class
and its knobs becomes the class option with dict values (``unlearn: [{class_path: Fisher, init_args: {alpha:
8.0e-06}}, ...]``), and one whose entries set several options of one group becomes the group (a null inside
it, as ``{metric: null}`` beside ``{metric: RandomMetric, same_class: true}``, stays a null). W&B's agent writes
a value as Python's ``str`` (``--unlearn={'class_path': 'Fisher', 'init_args': {'alpha': 8e-06}}``,
``--twins={'metric': None}``): the grid only matches that text to its own value and runs its own command, so no
value has to survive the CLI's parser on the agent's side. Several
seeds become the parameter ``config`` whose values name the seed and its baseline checkpoint. The parameter
values are what W&B shows as each run's sweep config; every cell is resolved to its run and the run's command
checked with the CLI's parser before the file is written.
"""

from __future__ import annotations

import itertools
import os

import yaml

from healing_pl.experiments.spec import SEED_OPTIONS, Run

#: the options that choose a method family's class; their knobs follow as ``<option>.<knob>``
CLASS_OPTIONS = ("unlearn", "adversary", "twins.metric")

#: the metric each command's sweep optimises: validation accuracy wherever a run has one (a choice never reads
#: test; ``healed/val/acc`` is the fine-tune's validation accuracy, logged every epoch, its last value in the
#: summary); a stream measures test accuracy per round only
METRICS = {"heal": "healed/val/acc", "unlearn": "unlearned/val/acc_mean", "stream": "stream/final/test/acc"}


def agent_args(values: dict) -> list[str]:
    """The arguments W&B's agent puts in place of ``${args}``: ``--name=value`` with Python's ``str`` of the
    value (wandb.sdk.launch.sweeps.utils.create_sweep_command_args, its "args" format)."""
    return [f"--{name}={value}" for name, value in values.items()]


def _nested(pairs: dict) -> dict:
    """Dotted options as a tree; a chosen class with its knobs as ``{class_path, init_args}``."""
    pairs = dict(pairs)
    for option in sorted(CLASS_OPTIONS, key=len, reverse=True):
        if option in pairs and isinstance(pairs[option], str):
            knobs = {k[len(option) + 1 :]: pairs.pop(k) for k in list(pairs) if k.startswith(option + ".")}
            pairs[option] = {"class_path": pairs[option], "init_args": knobs}
    tree: dict = {}
    for key, value in pairs.items():
        *groups, last = key.split(".")
        node = tree
        for group in groups:
            node = node.setdefault(group, {})
        node[last] = value
    return tree


def axis_parameter(name: str, entries: list[dict]) -> tuple[str, list]:
    """The sweep parameter of one axis: (its name, its values)."""
    keys = [key for entry in entries for key in entry]
    option = next((o for o in CLASS_OPTIONS if all(k == o or k.startswith(o + ".") for k in keys)), None)
    if all(len(entry) == 1 for entry in entries) and len(set(keys)) == 1:
        parameter, values = keys[0], ["null" if entry[keys[0]] is None else entry[keys[0]] for entry in entries]
    elif option is not None and all(isinstance(entry.get(option), str) for entry in entries):
        parameter = option  # a class and its knobs: {class_path, init_args}
        values = [_nested(entry) for entry in entries]
        for part in option.split("."):  # the class option's subtree (twins.metric: twins, then metric)
            values = [v[part] for v in values]
    else:
        split = [key.split(".") for key in keys]
        prefix: list[str] = []
        for parts in zip(*(s[:-1] for s in split)):
            if len(set(parts)) > 1:
                break
            prefix.append(parts[0])
        parameter = ".".join(prefix) or "config"  # options of several groups: a config given as text
        cut = len(prefix)
        values = [_nested({".".join(key.split(".")[cut:]): value for key, value in entry.items()}) for entry in entries]
    return parameter, values


def sweep_parameters(spec: dict, out: str) -> dict[str, list]:
    """Sweep parameter name -> values (the axes, and ``config`` for several seeds), in the grid's order."""
    command = spec.get("command", "heal")
    params: dict[str, list] = {}
    for name, entries in spec["axes"].items():
        parameter, values = axis_parameter(name, entries)
        if parameter in params or parameter == "config" and len(spec.get("seeds") or [None]) > 1:
            raise ValueError(
                f"the axes '{name}' and another one would both be the sweep parameter '{parameter}'; "
                "merge them into one axis."
            )
        params[parameter] = values
    seeds = spec.get("seeds") or [None]
    if len(seeds) > 1:  # last: the agent writes it after the axes, so a class an axis chooses takes the seeds
        params["config"] = [
            {
                "seed_everything": s,
                "ckpt_path": os.path.join(out, f"seed-{s}", "baseline", "checkpoints", "last.ckpt"),
                **_nested({key: s for key in SEED_OPTIONS[command] if key != "seed_everything"}),
            }
            for s in seeds
        ]
    return params


def sweep_command(spec_path: str, out: str) -> list[str]:
    """The sweep's command after ``healing-pl``, before the agent's ``${args}``: the grid runs the grid's run of
    the parameters (``--sweep-cell``), so the agent's run is the grid's, in its folder under its name."""
    return ["grid", spec_path, f"--out={out}", "--sweep-cell"]


def sweep_cells(spec: dict, spec_path: str, out: str) -> list[list[str]]:
    """Every command a W&B agent runs for this sweep (after ``healing-pl``), in the sweep's order."""
    params = sweep_parameters(spec, out)
    command = sweep_command(spec_path, out)
    return [[*command, *agent_args(dict(zip(params, combo)))] for combo in itertools.product(*params.values())]


def _parsed(text: str):
    """An agent's value as data: Python's literal (a dict's repr, a number), else YAML, else the text."""
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _index(values: list, text: str) -> int | None:
    """Which of a parameter's ``values`` the agent wrote as ``text`` (its ``str``, or the same data)."""
    for i, value in enumerate(values):
        if str(value) == text:
            return i
    parsed = _parsed(text)
    for i, value in enumerate(values):
        if parsed == value and type(parsed) is type(value):
            return i
    return None


def sweep_run(spec: dict, out: str, args: list[str], runs: list[Run]) -> Run:
    """The grid's run (of ``runs``, :func:`healing_pl.experiments.spec.build_runs`) that a W&B agent's ``args``
    (``--name=value``, one per sweep parameter) name; ValueError in one sentence for anything else."""
    params = sweep_parameters(spec, out)
    given: dict[str, str] = {}
    for arg in args:
        name, eq, text = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if not eq:
            raise ValueError(f"the sweep cell's argument '{arg[:80]}' is not --name=value.")
        if name not in params:
            raise ValueError(f"'{name}' is not a parameter of the grid's sweep (its parameters: {', '.join(params)}).")
        given[name] = text
    missing = [name for name in params if name not in given]
    if missing:
        raise ValueError(f"the sweep cell lacks the parameter '{missing[0]}' (its parameters: {', '.join(params)}).")
    indices = []
    for name, values in params.items():
        index = _index(values, given[name])
        if index is None:
            raise ValueError(f"--{name}={given[name][:80]} is not one of the grid's values of the parameter '{name}'.")
        indices.append(index)
    axes = [len(values) for values in spec["axes"].values()]
    cell = 0
    for index, size in zip(indices, axes):
        cell = cell * size + index
    seed = indices[len(axes)] if len(indices) > len(axes) else 0
    cells = [run for run in runs if run.baseline is not None]
    return cells[seed * (len(cells) // len(spec.get("seeds") or [None])) + cell]


def sweep_yaml(spec: dict, spec_path: str, out: str, name: str, file: str, baselines: list[list[str]]) -> str:
    """The sweep file: a header that says how to run it, then W&B's sweep configuration."""
    command = spec.get("command", "heal")
    shared = spec.get(command) or {}
    metric = "attack/strength" if command == "unlearn" and shared.get("attack_strength") else METRICS[command]
    project = "healing-pl"
    with open(spec["config"]) as f:
        config = yaml.safe_load(f) or {}
    if isinstance(config, dict) and isinstance(config.get("wandb"), dict):
        project = config["wandb"].get("project") or project
    params = sweep_parameters(spec, out)
    body = {
        "program": "healing-pl",
        "project": project,
        "name": name,
        "method": "grid",
        "metric": {"name": metric, "goal": "maximize"},
        "command": ["${env}", "healing-pl", *sweep_command(spec_path, out), "${args}"],
    }
    parameters = {"parameters": {key: {"values": values} for key, values in params.items()}}
    fits = "\n".join(f"#      healing-pl fit {' '.join(args)}" for args in baselines)
    header = f"""# W&B sweep of {spec_path}: the same runs as `healing-pl grid {spec_path}`, into its folder {out}
# under the same names, so `healing-pl report {out}` covers the agents' runs.
# Written by `healing-pl grid {spec_path} --export-sweep {file}`;
# edit the grid, not this file (tests/test_grid.py checks that they agree).
# 1. (optional) train the baseline{"s" if len(baselines) > 1 else ""} first; else the first agent trains each while
#    the others wait:
{fits}
# 2. create the sweep and run agents (needs a W&B server or account), from this repository's folder:
#      wandb sweep {file}            # prints the sweep id
#      wandb agent <entity>/<project>/<sweep id>
# 3. healing-pl report {out}
# Offline, `healing-pl grid {spec_path}` runs the baselines and every run, then the report.
"""
    return (
        header
        + yaml.safe_dump(body, sort_keys=False, default_flow_style=False, width=1000)
        + yaml.safe_dump(parameters, sort_keys=False, default_flow_style=None, width=1000)
    )
