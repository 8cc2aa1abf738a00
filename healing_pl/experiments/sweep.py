"""A grid spec as a W&B sweep: ``healing-pl grid SPEC --export-sweep [FILE]``.

The sweep runs the same commands as the grid: the fixed arguments carry the config, the
baseline checkpoint, the W&B group, the seeds (one seed) and the overrides every run shares;
each axis becomes one sweep parameter. An axis whose entries set one option becomes that option
(``twins.metric: [null, RawL2]``; a null goes through as the text ``null``, which the CLI reads as
None); an axis whose entries choose a class and its knobs becomes the class option with dict values
(``unlearn: [{class_path: Fisher, init_args: {alpha: 8.0e-06}}, ...]``), and one whose entries set
several options of one group becomes the group: W&B's agent writes a dict as its Python repr
(``--unlearn={'class_path': 'Fisher', 'init_args': {'alpha': 8e-06}}``), which jsonargparse reads on
top of the fixed options. Several seeds become the parameter ``config`` whose values
set the seeds and the seed's baseline checkpoint (``--config`` also takes a config as text).
Every cell's command is checked with the CLI's parser before the file is written.
"""

from __future__ import annotations

import itertools
import os

import yaml

from healing_pl.experiments.spec import SEED_OPTIONS, overrides, seed_args

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


def _contains_none(value) -> bool:
    if isinstance(value, dict):
        return any(_contains_none(v) for v in value.values())
    if isinstance(value, list):
        return any(_contains_none(v) for v in value)
    return value is None


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
    if _contains_none(values):
        raise ValueError(
            f"the axis '{name}' has a null value inside a group, which cannot pass through a W&B sweep (its agent "
            "writes Python's None); leave the option at its default instead."
        )
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


def fixed_args(spec: dict, out: str, name: str) -> list[str]:
    """The sweep command's arguments before ``${args}``."""
    command = spec.get("command", "heal")
    seeds = spec.get("seeds") or [None]
    args = [f"--config={spec['config']}"]
    if len(seeds) == 1:
        args.append(f"--ckpt_path={os.path.join(out, 'baseline', 'checkpoints', 'last.ckpt')}")
    args.append(f"--wandb.group={name}")
    if len(seeds) == 1:
        args += seed_args(command, seeds[0])
    return args + overrides(spec.get(command))


def sweep_cells(spec: dict, out: str, name: str) -> list[list[str]]:
    """Every command a W&B agent runs for this sweep (after ``healing-pl``), in the grid's order."""
    command = spec.get("command", "heal")
    params = sweep_parameters(spec, out)
    fixed = fixed_args(spec, out, name)
    return [[command, *fixed, *agent_args(dict(zip(params, combo)))] for combo in itertools.product(*params.values())]


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
        "command": ["${env}", "healing-pl", command, *fixed_args(spec, out, name), "${args}"],
    }
    parameters = {"parameters": {key: {"values": values} for key, values in params.items()}}
    fits = "\n".join(f"#      healing-pl fit {' '.join(args)}" for args in baselines)
    header = f"""# W&B sweep of {spec_path}: the same runs as `healing-pl grid {spec_path}`.
# Written by `healing-pl grid {spec_path} --export-sweep {file}`;
# edit the grid, not this file (tests/test_grid.py checks that they agree).
# 1. train the baseline{"s" if len(baselines) > 1 else ""} once:
{fits}
# 2. create the sweep and run agents (needs a W&B server or account):
#      wandb sweep {file}            # prints the sweep id
#      wandb agent <entity>/<project>/<sweep id>
# Offline, `healing-pl grid {spec_path}` runs the baselines and every run, then the report.
"""
    return (
        header
        + yaml.safe_dump(body, sort_keys=False, default_flow_style=False, width=1000)
        + yaml.safe_dump(parameters, sort_keys=False, default_flow_style=None, width=1000)
    )
