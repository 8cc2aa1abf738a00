"""Comparison tables from finished runs' ``results.json`` records.

Runs are grouped by their experiment identity (``experiment/id``, :mod:`healing_pl.phases.identity`):
the runs of one experiment differ only in the compared axis (the heal setup R or T-<metric>, and the
spare policy) and in their seeds. Runs of one identity and one seed whose baseline checkpoints differ
are separate experiments. A table compares unlearning methods on one experiment setup (the rows of the
paper's Table 4); experiments that differ in anything else, a method's hyperparameters included, get
tables of their own, and the report says so in one line on stderr.

Per row: the baseline (BL), the gold standard (GS), the unlearned start (Init), the best and worst
heal setup after 1 epoch and after N/2 epochs, and Best−GS. Best and worst are taken over R and the
four twin metrics only; random twins (and any other control) have their own columns. The best is
chosen by validation accuracy (``healed/val/acc_epoch_k``) and reported with its test accuracy;
equal validation accuracies are a tie and name every tied setup.

Every comparison is paired (:mod:`healing_pl.report.stats`, docs/statistics.md): the setups of one seed start
from the same unlearned model and are scored on the same test images, so per seed each setup minus R, minus
each control (T-random) and minus GS is one difference, and across seeds the table prints the mean difference
with its 95% interval, the minimum difference the seeds could detect (80% power) and, where the runs saved
their per-image results, exact McNemar tests on the test images. ``≈`` (within noise) marks a paired interval
that contains 0: on the best, its difference to another compared setup; on Best−GS, to the gold standard. Each
cell over seeds is the mean [95% interval], never outside its range ([0, 100] for accuracies); seeds that mix
collapsed and intact models print per seed with a count; one seed prints single values and says "n = 1: no
uncertainty".
"""

from __future__ import annotations

import copy
import glob
import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field

from healing_pl import records as rk
from healing_pl.healing import TWIN_METRICS
from healing_pl.phases.config import SAME_CLASS
from healing_pl.phases.evaluate import load_correctness
from healing_pl.phases.identity import experiment_id, short_hash
from healing_pl.report import stats


#: the setups best and worst are chosen from: R and every registered twin metric that is not a control (the
#: random twins); a control's setup is shown but never chosen
def compared_setups() -> tuple[str, ...]:
    return ("R", *(cls.label for cls in TWIN_METRICS.classes() if not cls.control))


#: flat record keys that stand for the identity of a record written before identities were recorded
_FLAT_IDENTITY = (
    rk.DATASET,
    rk.BACKBONE,
    rk.BASELINE_EPOCHS,
    rk.ADVERSARY_SELECTOR,
    rk.ADVERSARY_BUDGET,
    rk.ADVERSARY_TARGET_CLASS,
    rk.ADVERSARY_SYSTEM_KNOWLEDGE,
    rk.ADVERSARY_DATA_KNOWLEDGE,
    rk.HEAL_EPOCHS,
    rk.HEAL_LR,
)


def load_records(paths: list[str]) -> list[dict]:
    """Every ``results.json`` under ``paths`` (folders searched recursively, or files)."""
    files: list[str] = []
    for path in paths:
        if os.path.isfile(path):
            files.append(path)
        elif os.path.isdir(path):
            files += glob.glob(os.path.join(path, "**", "results.json"), recursive=True)
        else:
            raise FileNotFoundError(f"'{path}' is neither a results.json file nor a folder.")
    records = []
    for file in sorted(set(files)):
        with open(file) as f:
            try:
                record = json.load(f)
            except json.JSONDecodeError:
                raise ValueError(f"'{file}' is not valid JSON; the run may have been interrupted.") from None
            except UnicodeDecodeError:
                raise ValueError(f"'{file}' is not a text file, so not a results record.") from None
        if not isinstance(record, dict):
            raise ValueError(f"'{file}' is not a results record (a JSON object), but a {type(record).__name__}.")
        record.setdefault(rk.RUN_DIR.name, os.path.dirname(file))
        record[rk.FILE.name] = file
        records.append(record)
    return records


# --------------------------------------------------------------------------- statistics
def t_quantile(n: int) -> float:
    """The 97.5% quantile of Student's t with n - 1 degrees of freedom."""
    return stats.t_quantile(0.975, n - 1)


@dataclass
class Stat:
    """One figure over seeds (accuracies, AUCs and differences as fractions): its values, mean and interval.

    ``bounds``: the range the figure lives in (stats.UNIT for an accuracy or AUC, stats.DIFFERENCE for a
    difference of two, None for a time); its interval never leaves it (:func:`healing_pl.report.stats.interval`).
    ``threshold``: an accuracy's collapse threshold; ``collapsed``: for a difference, the seeds in which either
    side collapsed. Seeds that mix collapsed and intact models print per seed with their count, not a mean."""

    values: list[float] = field(default_factory=list)
    bounds: tuple[float, float] | None = stats.UNIT
    threshold: float | None = None
    collapsed: int | None = None

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return sum(self.values) / self.n if self.values else None

    @property
    def half(self) -> float | None:
        """t(0.975, n-1) * s / sqrt(n), s the sample standard deviation (the unbounded t interval's half-width,
        for error bars); None for fewer than 2 values."""
        ci = stats.t_interval(self.values)
        return None if ci is None else (ci[1] - ci[0]) / 2

    @property
    def mixed(self) -> bool:
        """Whether the seeds mix collapsed and intact models (a bimodal figure)."""
        k = self.collapsed if self.collapsed is not None else stats.collapsed(self.values, self.threshold)
        return 0 < k < self.n

    def summary(self) -> stats.Summary:
        if self.collapsed is None:
            return stats.summary(self.values, self.bounds, self.threshold)
        values = tuple(float(v) for v in self.values)
        if not values:
            return stats.Summary((), None, None)
        mixed = 0 < self.collapsed < len(values)
        ci = None if mixed else stats.interval(values, self.bounds)
        return stats.Summary(values, self.mean, ci, self.collapsed, mixed)

    def interval(self) -> tuple[float, float] | None:
        """The 95% interval of the mean, inside ``bounds`` (None for fewer than 2 values or a bimodal figure)."""
        ci = self.summary().interval
        return None if ci is None else (ci.low, ci.high)

    @property
    def sd(self) -> float | None:
        return stats.sd(self.values)

    @property
    def mde(self) -> float | None:
        """For paired differences: the minimum detectable difference at 80% power (two-sided alpha 0.05)."""
        return stats.mde(self.n, self.sd)

    @property
    def within_noise(self) -> bool | None:
        """For paired differences: whether the interval contains 0 (None without an interval)."""
        ci = self.interval()
        return None if ci is None else ci[0] <= 0.0 <= ci[1]

    def overlaps(self, other: Stat) -> bool:
        """Whether both have confidence intervals and they overlap (not a test of their difference: the report
        compares setups by their paired differences)."""
        a, b = self.interval(), other.interval()
        return a is not None and b is not None and a[0] <= b[1] and b[0] <= a[1]

    def json(self) -> dict | None:
        if not self.values:
            return None
        s = self.summary()
        return {
            "mean": self.mean,
            "n": self.n,
            "values": list(self.values),
            "interval": None if s.interval is None else [s.interval.low, s.interval.high],
            "interval_kind": None if s.interval is None else s.interval.kind,
            "collapsed": s.collapsed,
            "bimodal": s.mixed,
        }

    def cell(self, signed: bool = False, n_row: int | None = None, scale: float = 100.0, digits: int = 2) -> str:
        """Percent: ``88.48``, or ``88.48 [86.10, 90.86]`` over seeds (the 95% interval, inside the range), or
        ``per seed 10.00, 95.20 (1 of 2 collapsed)``; ``[n=2]`` where n differs from the row's."""
        if not self.values:
            return "—"
        s = self.summary()
        if s.interval is None and not s.mixed:
            text = f"{scale * self.mean:{'+' if signed else ''}.{digits}f}"
        else:
            text = s.text(scale, digits, signed)
        if n_row is not None and self.n != n_row:
            text += f" [n={self.n}]"
        return text


def difference(a: list[float], b: list[float], collapsed: int = 0) -> Stat:
    """Paired differences a - b (one pair per seed) as a Stat in [-1, 1]; ``collapsed``: seeds where a side
    collapsed."""
    return Stat([x - y for x, y in zip(a, b)], bounds=stats.DIFFERENCE, collapsed=collapsed)


# --------------------------------------------------------------------------- experiments
def record_identity(record: dict) -> tuple[dict, str, dict, bool]:
    """``(identity, id, seeds, derived)`` of a record; ``derived``: rebuilt from the flat keys of a record
    written before identities were recorded (dataset, model, method, adversary, baseline, heal settings)."""
    if rk.EXPERIMENT_ID in record and isinstance(record.get(rk.EXPERIMENT), dict):
        identity, exp_id = record[rk.EXPERIMENT], record[rk.EXPERIMENT_ID]
        if _same_class(record):  # a compared heal setup (the same-class control), not another experiment
            exp_id = experiment_id(_without_same_class(identity))
        return identity, exp_id, dict(record.get(rk.EXPERIMENT_SEEDS) or {}), False
    config = {_dotted(k): record.get(k) for k in _FLAT_IDENTITY if k in record}
    config.update({_dotted(k): v for k, v in record.items() if rk.knob_of(k) is not None and k != rk.UNLEARN_SEED})
    seeds = {_dotted(rk.UNLEARN_SEED): record[rk.UNLEARN_SEED]} if rk.UNLEARN_SEED in record else {}
    sha = record.get(rk.BASELINE_SHA256)
    identity = {
        "subcommand": record.get(rk.PHASE),
        "config": config,
        "baseline": None if sha is None else {"sha256": sha, "hparams": {}},
        "seeds": seeds,
    }
    return identity, "flat-" + short_hash({"subcommand": record.get(rk.PHASE), "config": config}), seeds, True


def _same_class(record: dict) -> bool:
    """Whether a heal run restricted its twins to their request's class (``twins.same_class``)."""
    identity = record.get(rk.EXPERIMENT)
    twins = ((identity or {}).get("config") or {}).get("twins") if isinstance(identity, dict) else None
    return isinstance(twins, dict) and twins.get("same_class") is True


def _without_same_class(identity: dict) -> dict:
    """``identity`` as its run would have it without ``twins.same_class``: the experiment the setup belongs to."""
    out = copy.deepcopy(identity)
    out["config"]["twins"]["same_class"] = False
    return out


def _dotted(key: str) -> str:
    """A flat record key as the dotted option it records (``adversary/budget`` -> ``adversary.budget``)."""
    return key.replace("/", ".")


def _seed_key(seeds: dict) -> str:
    return json.dumps(seeds, sort_keys=True, default=str)


def _sha(record: dict) -> str | None:
    identity = record.get(rk.EXPERIMENT)
    if isinstance(identity, dict) and isinstance(identity.get("baseline"), dict):
        return identity["baseline"].get("sha256")
    return record.get(rk.BASELINE_SHA256)


@dataclass
class Experiment:
    """The runs of one experiment: one identity (and one baseline where a seed had two)."""

    id: str
    identity: dict
    records: list[dict]
    derived: bool
    split_baseline: str | None = None  # the baseline's sha256 when the identity's runs were split by it

    def flat(self) -> dict:
        """The identity as dotted keys: config, baseline hyperparameters and sha256 (when it is one)."""
        out = _flatten(self.identity.get("config") or {})
        baseline = self.identity.get("baseline") or {}
        out.update(_flatten(baseline.get("hparams") or {}, "baseline.hparams."))
        shas = {_sha(r) for r in self.records}
        if len(shas) == 1:
            out["baseline.sha256"] = next(iter(shas))
        return out

    @property
    def group(self) -> str | None:
        return (self.identity.get("config") or {}).get("wandb", {}).get("group") if not self.derived else None


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value, sort_keys=True, default=str) if isinstance(value, list) else value
    return out


def experiments(records: list[dict], phase: str = rk.HEAL) -> list[Experiment]:
    """The ``phase`` records grouped into experiments (sorted by dataset, method and id)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        if r.get(rk.PHASE) == phase:
            groups[record_identity(r)[1]].append(r)
    out = []
    for exp_id, runs in groups.items():
        runs = sorted(runs, key=lambda r: str(r.get(rk.RUN_DIR)))
        first = next((r for r in runs if not _same_class(r)), runs[0])  # the experiment's own identity
        identity, _, _, derived = record_identity(first)
        shas_by_seed: dict[str, set] = defaultdict(set)
        for r in runs:
            shas_by_seed[_seed_key(record_identity(r)[2])].add(_sha(r))
        if all(len(s) == 1 for s in shas_by_seed.values()):
            out.append(Experiment(exp_id, identity, runs, derived))
        else:  # one seed, two baselines: each baseline is an experiment of its own
            by_sha: dict[str, list[dict]] = defaultdict(list)
            for r in runs:
                by_sha[str(_sha(r))].append(r)
            for sha, part in sorted(by_sha.items()):
                out.append(Experiment(f"{exp_id}/{sha[:8]}", identity, part, derived, split_baseline=sha))
    return sorted(out, key=lambda e: (str(e.records[0].get(rk.DATASET)), str(_method(e.records[0])), e.id))


def _method(record: dict) -> str | None:
    return record.get(rk.UNLEARN_METHOD)


def differing(dicts: list[dict]) -> list[str]:
    """The keys present in every dict whose values are not all equal (sorted)."""
    if len(dicts) < 2:
        return []
    common = set(dicts[0]).intersection(*dicts[1:])
    return sorted(k for k in common if len({json.dumps(d[k], sort_keys=True, default=str) for d in dicts}) > 1)


@dataclass
class Table:
    """Experiments compared in one table: one row each, differing only in the unlearning method."""

    experiments: list[Experiment]
    title: str = ""

    def key(self) -> dict:
        """The dotted identity keys that every experiment of the table shares."""
        flats = [e.flat() for e in self.experiments]
        shared = differing(flats)
        common = set(flats[0]).intersection(*flats[1:]) if len(flats) > 1 else set(flats[0])
        return {k: flats[0][k] for k in sorted(common) if k not in shared}


def tables(exps: list[Experiment]) -> list[Table]:
    """Experiments that agree outside the ``unlearn`` section and use distinct methods share a table."""
    by_setup: dict[str, list[Experiment]] = defaultdict(list)
    for e in exps:
        flat = e.flat()
        outside = {k: v for k, v in flat.items() if not k.startswith("unlearn.")}
        by_setup[json.dumps(outside, sort_keys=True, default=str) + str(e.derived)].append(e)
    out = []
    for members in by_setup.values():
        methods = [_method(e.records[0]) for e in members]
        if len(set(methods)) == len(methods):
            out.append(Table(members))
        else:  # two experiments of one method: their settings differ, so they are not rows of one table
            out += [Table([e]) for e in members]
    out.sort(key=lambda t: (str(t.experiments[0].records[0].get(rk.DATASET)), t.experiments[0].id))
    keys = [t.key() for t in out]
    distinct = differing(keys)
    for t, key in zip(out, keys):
        names = ", ".join(f"{k}={_short(key[k])}" for k in distinct[:6]) + (", …" if len(distinct) > 6 else "")
        ids = ", ".join(e.id for e in t.experiments)
        group = t.experiments[0].group
        old = " (no identity recorded: grouped by flat keys)" if t.experiments[0].derived else ""
        t.title = f"experiment {ids}{old}" + (f" (group {group})" if group else "") + (f": {names}" if names else "")
    return out


def _short(value) -> str:
    text = str(value)
    return text[:12] + "…" if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else text


# --------------------------------------------------------------------------- healing rows
def _label(record: dict, several_policies: bool) -> str:
    setup = record.get(rk.HEAL_SETUP) or "?"
    if _same_class(record) and setup != "R" and not setup.endswith(SAME_CLASS):
        setup += SAME_CLASS  # recorded before the label said so
    policy = record.get(rk.TWINS_POLICY)
    return f"{setup} [{policy}]" if several_policies and setup != "R" and policy else setup


def _base(label: str) -> str:
    return label.split(" [")[0]


def is_compared(label: str) -> bool:
    """Whether a setup is a candidate for best and worst (R and the four twin metrics), not a control."""
    return _base(label) in compared_setups()


def _at(record: dict, split: str, epoch: int | None) -> float | None:
    """The healed accuracy on ``split`` after ``epoch`` epochs (epoch 0 on test: the unlearned start)."""
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        return None
    if epoch == 0 and split == "test":
        value = record.get(rk.healed_acc("test", 0))
        return record.get(rk.UNLEARNED_TEST_ACC) if value is None else value
    return record.get(rk.healed_acc(split, epoch))


def runs_by_seed(exp: Experiment) -> tuple[dict[str, dict[str, dict]], bool]:
    several_policies = len({r.get(rk.TWINS_POLICY) for r in exp.records if r.get(rk.HEAL_SETUP) != "R"}) > 1
    by_seed: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in exp.records:  # sorted by run folder: a repeated run of one seed and setup counts once
        by_seed[_seed_key(record_identity(r)[2])].setdefault(_label(r, several_policies), r)
    return dict(sorted(by_seed.items())), several_policies


def _choose(cands: dict[str, Stat], highest: bool) -> list[str]:
    """The setups whose mean is the highest (or lowest); several when they tie."""
    means = {k: s.mean for k, s in cands.items() if s.mean is not None}
    if not means:
        return []
    target = max(means.values()) if highest else min(means.values())
    return sorted((k for k, m in means.items() if math.isclose(m, target, rel_tol=0, abs_tol=1e-12)), key=_order)


def _order(label: str):
    base = _base(label)
    setups = compared_setups()
    return (setups.index(base) if base in setups else len(setups), label)


def classes(exp: Experiment) -> int | None:
    """The experiment's number of classes: the baseline's ``num_classes``, else the forget set's class count."""
    hparams = (exp.identity.get("baseline") or {}).get("hparams") or {}
    if isinstance(hparams.get("num_classes"), int):
        return hparams["num_classes"]
    counts = exp.records[0].get(rk.FORGET_CLASSES)
    return len(counts) if isinstance(counts, list) and counts else None


def _test_at(record: dict, col: str) -> float | None:
    """A run's test accuracy after 1 epoch (``col`` "1") or after its last epoch (N/2)."""
    return _at(record, "test", 1 if col == "1" else record.get(rk.HEAL_EPOCHS))


def paired(by_seed: dict, label: str, ref: str, col: str, threshold: float | None, value=None) -> Stat:
    """Per seed: setup ``label`` minus ``ref`` (a setup of the same seed, or "GS") on the same start and test
    set; the seeds where either side collapsed are counted. ``value(record)`` is what is compared (default: the
    test accuracy after 1 epoch, ``col`` "1", or after the last, "N/2"); ``by_seed`` is :func:`runs_by_seed`'s."""
    value = value or (lambda record: _test_at(record, col))
    a, b, collapsed = [], [], 0
    for runs in by_seed.values():
        r = runs.get(label)
        if r is None:
            continue
        x = value(r)
        y = r.get(rk.GOLD_TEST_ACC) if ref == "GS" else (value(runs[ref]) if ref in runs else None)
        if x is None or y is None:
            continue
        a.append(x)
        b.append(y)
        collapsed += int(stats.collapsed([x, y], threshold) > 0)
    return difference(a, b, collapsed)


def _correctness(record: dict) -> dict[str, list[bool]]:
    """The per-image test correctness a run saved beside its results.json (empty when none)."""
    folder = os.path.dirname(str(record[rk.FILE.name])) if rk.FILE.name in record else record.get(rk.RUN_DIR)
    return load_correctness(str(folder)) if folder else {}


def _mcnemar(by_seed: dict, label: str, ref: str) -> list[stats.McNemar]:
    """Per seed: exact McNemar of setup ``label``'s final model against ``ref``'s (a setup, or "GS") on the test
    images, where both runs saved their per-image correctness."""
    out = []
    for runs in by_seed.values():
        if label not in runs:
            continue
        mine = _correctness(runs[label])
        if ref == "GS":
            theirs = mine.get(rk.GOLD)
        else:
            theirs = _correctness(runs[ref]).get(rk.HEALED) if ref in runs else None
        if mine.get(rk.HEALED) is not None and theirs is not None and len(theirs) == len(mine[rk.HEALED]):
            out.append(stats.mcnemar(mine[rk.HEALED], theirs))
    return out


def references(labels: list[str]) -> list[str]:
    """What every setup is compared with: R, each control (T-random) and the gold standard."""
    return ["R", *(label for label in labels if not is_compared(label)), "GS"]


def healing_row(exp: Experiment) -> dict:
    """The Table 4 figures of one experiment, over its seeds, and every setup's paired differences."""
    by_seed, _ = runs_by_seed(exp)
    first = exp.records[0]
    seeds = list(by_seed)
    threshold = stats.collapse_threshold(classes(exp))

    def over_seeds(key: str) -> Stat:
        values = []
        for runs in by_seed.values():
            value = next((r.get(key) for r in runs.values() if r.get(key) is not None), None)
            if value is not None:
                values.append(value)
        return Stat(values, threshold=threshold)

    labels = sorted({label for runs in by_seed.values() for label in runs}, key=_order)
    n_half = max((r.get(rk.HEAL_EPOCHS) or 0) for r in exp.records) or None
    row = {
        "experiment": exp.id,
        "group": exp.group,
        "identity": exp.identity,
        "identity_derived": exp.derived,
        "dataset": first.get(rk.DATASET),
        "backbone": first.get(rk.BACKBONE),
        "method": _method(first),
        "selector": first.get(rk.ADVERSARY_SELECTOR),
        "forget": first.get(rk.FORGET_COUNT),
        "seeds": len(seeds),
        "seed_values": [json.loads(s) for s in seeds],
        "N/2": n_half,
        "collapse threshold": threshold,
        "BL": over_seeds(rk.BASELINE_TEST_ACC),
        "GS": over_seeds(rk.GOLD_TEST_ACC),
        "Init": over_seeds(rk.UNLEARNED_TEST_ACC),
        "Init mean": first.get(rk.UNLEARNED_ACC_MEAN),
        "Init std": first.get(rk.UNLEARNED_ACC_STD),
        "setups": {},
        "curves": {},
        "paired": {},
        "mcnemar": {},
        "runs": {
            label: [runs[label].get(rk.RUN_DIR) for runs in by_seed.values() if label in runs] for label in labels
        },
        "notes": [],
    }
    val_missing = any(
        _at(r, "val", r.get(rk.HEAL_EPOCHS) or 1) is None
        for runs in by_seed.values()
        for label, r in runs.items()
        if is_compared(label)
    )
    if val_missing:
        missing = rk.HEALED_EPOCH.template.format(split="val", epoch="k")
        row["notes"].append(f"chosen on test accuracy: some runs record no validation accuracy ({missing})")
    refs = references(labels)
    for label in labels:
        runs = [runs[label] for runs in by_seed.values() if label in runs]
        per_col = {}
        for col in ("1", "N/2"):
            test, val = [], []
            for r in runs:
                epoch = 1 if col == "1" else r.get(rk.HEAL_EPOCHS)
                t, v = _at(r, "test", epoch), _at(r, "val", epoch)
                if t is not None:
                    test.append(t)
                if v is not None:
                    val.append(v)
            per_col[col], per_col[f"val {col}"] = Stat(test, threshold=threshold), Stat(val, threshold=threshold)
        row["setups"][label] = per_col
        epochs = max((r.get(rk.HEAL_EPOCHS) or 0) for r in runs)
        row["curves"][label] = [
            Stat([x for x in (_at(r, "test", k) for r in runs) if x is not None], threshold=threshold)
            for k in range(epochs + 1)
        ]
        row["paired"][label] = {
            ref: {col: paired(by_seed, label, ref, col, threshold) for col in ("1", "N/2")}
            for ref in refs
            if ref != label
        }
        row["mcnemar"][label] = {ref: _mcnemar(by_seed, label, ref) for ref in refs if ref != label}
    row["gaps"] = {label: row["paired"][label]["GS"]["N/2"] for label in labels}
    for col in ("1", "N/2"):
        compared = [label for label in labels if is_compared(label)]
        key = col if val_missing else f"val {col}"
        cands = {label: row["setups"][label][key] for label in compared}
        best, worst = _choose(cands, True), _choose(cands, False)
        row[f"best {col}"] = best
        row[f"worst {col}"] = worst
        if not best:
            continue
        # within noise: the best's paired difference to another compared setup has an interval holding 0
        others = [paired(by_seed, best[0], label, col, threshold) for label in compared if label not in best]
        row[f"best {col} within noise"] = any(d.within_noise for d in others)
        row[f"best-GS {col}"] = {label: row["paired"][label]["GS"][col] for label in best}
        row[f"best-GS {col} within noise"] = bool(row[f"best-GS {col}"][best[0]].within_noise)
    return row


def healing_tables(records: list[dict]) -> list[dict]:
    """One entry per table: ``title``, ``key`` (shared identity) and ``rows`` (one per experiment)."""
    out = []
    for table in tables(experiments(records, rk.HEAL)):
        out.append({"title": table.title, "key": table.key(), "rows": [healing_row(e) for e in table.experiments]})
    return out


def healing_rows(records: list[dict]) -> list[dict]:
    """Every table's rows, in table order."""
    return [row for table in healing_tables(records) for row in table["rows"]]


def mixed_warning(records: list[dict], source: str | None = None) -> str | None:
    """The one-line warning for records of several experiments (None when they hold at most one table)."""
    found = tables(experiments(records, rk.HEAL))
    if len(found) < 2:
        return None
    distinct = differing([t.key() for t in found]) or ["their settings"]
    where = source or _source(records)
    return (
        f"healing-pl report: warning: {where} holds {len(found)} experiments that differ in "
        f"{', '.join(distinct)}; reported separately."
    )


def derived_warning(records: list[dict]) -> str | None:
    old = [r for r in records if r.get(rk.PHASE) == rk.HEAL and record_identity(r)[3]]
    if not old:
        return None
    return (
        f"healing-pl report: {len(old)} heal record(s) carry no experiment identity (written before it was "
        "recorded); grouped by their dataset, model, method and settings, adversary, baseline and heal epochs "
        "and lr instead."
    )


def _source(records: list[dict]) -> str:
    dirs = [os.path.abspath(str(r.get(rk.RUN_DIR))) for r in records if r.get(rk.RUN_DIR)]
    if not dirs:
        return "the records"
    common = os.path.commonpath(dirs) if len(dirs) > 1 else os.path.dirname(dirs[0])
    return os.path.relpath(common) if not os.path.relpath(common).startswith("..") else common


# --------------------------------------------------------------------------- markdown
def _pct(value) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def _delta(value) -> str:
    return "—" if value is None else f"{100 * value:+.2f}"


def _chosen_cell(row: dict, col: str, which: str) -> str:
    labels = row.get(f"{which} {col}") or []
    if not labels:
        return "—"
    cells = [row["setups"][label][col].cell(n_row=row["seeds"]) for label in labels]
    mark = "≈ " if which == "best" and row.get(f"best {col} within noise") else ""
    if len(set(cells)) == 1:  # a tie with equal test figures: one figure, every name
        return f"{mark}{cells[0]} ({' = '.join(labels)})"
    # a tie on validation whose test figures differ: each figure beside its own setup
    return mark + " = ".join(f"{cell} ({label})" for cell, label in zip(cells, labels))


def _gap_cell(row: dict, col: str) -> str:
    gaps = row.get(f"best-GS {col}") or {}
    if not gaps:
        return "—"
    cells = sorted({s.cell(signed=True, n_row=row["seeds"]) for s in gaps.values()})
    return ("≈ " if row.get(f"best-GS {col} within noise") else "") + " / ".join(cells)


def _init_cell(row: dict) -> str:
    init = row["Init"]
    if row["seeds"] > 1:
        return init.cell(n_row=row["seeds"])
    spread = (
        f" (repeats: mean {_pct(row['Init mean'])}, sd {_pct(row['Init std'])})" if row["Init mean"] is not None else ""
    )
    return init.cell() + spread


def controls(rows: list[dict]) -> list[str]:
    return sorted({label for row in rows for label in row["setups"] if not is_compared(label)}, key=_order)


def table_markdown(table: dict) -> str:
    """Markdown: the Table 4 summary of one table's rows, then every heal setup's accuracy."""
    rows = table["rows"]
    ctrl = controls(rows)
    head = (
        "| dataset (model) | method | forget set | seeds | BL | GS | Init | best 1 ep | worst 1 ep "
        "| best N/2 ep | worst N/2 ep | Best−GS 1 ep | Best−GS N/2 ep |"
        + "".join(f" {c} 1 ep | {c} N/2 ep |" for c in ctrl)
    )
    out = [head, "|" + "---|" * (13 + 2 * len(ctrl))]
    for r in rows:
        line = (
            f"| {r['dataset']} ({r['backbone']}) | {r['method']} | {r['forget']} × {r['selector']} | {r['seeds']} "
            f"| {r['BL'].cell(n_row=r['seeds'])} | {r['GS'].cell(n_row=r['seeds'])} | {_init_cell(r)} "
            f"| {_chosen_cell(r, '1', 'best')} | {_chosen_cell(r, '1', 'worst')} "
            f"| {_chosen_cell(r, 'N/2', 'best')} | {_chosen_cell(r, 'N/2', 'worst')} "
            f"| {_gap_cell(r, '1')} | {_gap_cell(r, 'N/2')} |"
        )
        for c in ctrl:
            acc = r["setups"].get(c, {})
            line += "".join(f" {acc[col].cell(n_row=r['seeds']) if col in acc else '—'} |" for col in ("1", "N/2"))
        out.append(line)
    out += ["", "Every heal setup (test accuracy %, after 1 epoch / after N/2 epochs):", ""]
    names = [f"{r['dataset']} {r['method']}" for r in rows]
    out.append("| setup | " + " | ".join(names) + " |")
    out.append("|---|" + "---|" * len(names))
    for s in sorted({s for r in rows for s in r["setups"]}, key=_order):
        cells = []
        for r in rows:
            acc = r["setups"].get(s)
            cells.append(
                "—" if acc is None else f"{acc['1'].cell(n_row=r['seeds'])} / {acc['N/2'].cell(n_row=r['seeds'])}"
            )
        out.append(f"| {s} | " + " | ".join(cells) + " |")
    notes = sorted({n for r in rows for n in r["notes"]})
    legend = (
        "Best and worst over R and the twin metrics (controls in their own columns), chosen by validation "
        "accuracy and reported with test accuracy; A = B: a tie."
    )
    legend += " " + seeds_sentence([r["seeds"] for r in rows])
    if any(r["seeds"] > 1 for r in rows):
        legend += (
            " Over seeds: mean [95% interval] (Student t, kept inside [0, 100]: cut at the range below 5 seeds, a "
            "bootstrap from 5 on; docs/statistics.md); ≈: within noise: the paired interval of the best minus "
            "another compared setup (on Best−GS: minus GS) contains 0."
        )
    if any(r["Init"].mixed or any(a[c].mixed for a in r["setups"].values() for c in ("1", "N/2")) for r in rows):
        legend += f" {_collapse_sentence(rows)}"
    out += ["", legend]
    out += [f"Note: {n}." for n in notes]
    for r in rows:
        out += ["", paired_markdown(r)]
    return "\n".join(out)


def seeds_sentence(ns: list[int]) -> str:
    """What the number of seeds allows: ``n = 3 seeds: t intervals are wide (t = 4.30)``; ``n = 1: no
    uncertainty``."""
    ns = sorted(set(ns))
    parts = []
    for n in ns:
        if n == 1:
            parts.append("n = 1: no uncertainty (one seed: single values, no interval)")
        elif n < stats.FEW:
            parts.append(f"n = {n} seeds: t intervals are wide (t = {t_quantile(n):.2f})")
        else:
            parts.append(f"n = {n} seeds")
    return "; ".join(parts) + "."


def _collapse_sentence(rows: list[dict]) -> str:
    thresholds = {r["collapse threshold"] for r in rows if r.get("collapse threshold") is not None}
    below = " or ".join(f"{100 * t:.0f}%" for t in sorted(thresholds)) or "chance"
    return (
        f"per seed …: the seeds mix collapsed models (test accuracy below {below}, chance plus "
        f"{100 * stats.COLLAPSE_MARGIN:.0f} points) and intact ones, so no mean is shown; the count of collapsed seeds "
        "follows."
    )


def _paired_cell(diff: Stat, n_row: int) -> str:
    if not diff.values:
        return "—"
    return ("≈ " if diff.within_noise else "") + diff.cell(signed=True, n_row=n_row)


def _mcnemar_cell(tests: list[stats.McNemar], n_row: int) -> str:
    if not tests:
        return "—"
    if len(tests) == 1 and n_row == 1:
        t = tests[0]
        return f"{t.b} / {t.c}, p = {t.p:.3g}"
    b, c = sum(t.b for t in tests), sum(t.c for t in tests)
    significant = sum(t.p < stats.ALPHA for t in tests)
    return f"p < {stats.ALPHA:g} in {significant} of {len(tests)} seeds ({b} / {c} in all)"


def paired_markdown(row: dict) -> str:
    """Markdown: every setup of one experiment minus R, minus each control (T-random) and minus GS, paired by
    seed; the minimum detectable difference against R and against each control; exact McNemar against R on the
    test images."""
    n = row["seeds"]
    labels = sorted(row["paired"], key=_order)
    refs = references(labels)
    others = [ref for ref in refs if ref != "R"]
    detect = [ref for ref in refs if ref != "GS"]  # the comparisons a twin setup must win: R and each control
    head = (
        "| setup | − R 1 ep | − R N/2 ep |"
        + "".join(f" − {ref} N/2 ep |" for ref in others)
        + "".join(f" MDE − {ref} N/2 ep |" for ref in detect)
        + " McNemar − R N/2 ep: b / c |"
    )
    out = [
        f"Paired differences, {row['method']} (points; n = {n} seed{'s' if n != 1 else ''}; per seed: the setup "
        "minus the reference on the same unlearned start and the same test images):",
        "",
        head,
        "|" + "---|" * (4 + len(others) + len(detect)),
    ]
    for label in labels:
        diffs = row["paired"][label]
        cells = [_paired_cell(diffs["R"][col], n) if "R" in diffs else "—" for col in ("1", "N/2")]
        cells += [_paired_cell(diffs[ref]["N/2"], n) if ref in diffs else "—" for ref in others]
        for ref in detect:
            # no MDE from a bimodal spread: seeds that mix collapsed and intact models are not one noise
            mde = diffs[ref]["N/2"].mde if ref in diffs and not diffs[ref]["N/2"].mixed else None
            cells.append("—" if mde is None else f"{100 * mde:.2f}")
        cells.append(_mcnemar_cell(row["mcnemar"][label].get("R", []), n) if "R" in diffs else "—")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    legend = seeds_sentence([n]) + " "
    if n > 1:
        legend += (
            "Each cell: the mean of the per-seed differences [its 95% interval: Student t on the differences "
            "(scipy's paired t); where that would leave [−100, 100], a bootstrap from 5 seeds on and below 5 cut "
            "at the range]; ≈: the interval contains 0 (within noise). MDE: the smallest difference from R (or "
            f"from a control) that {n} seeds detect with 80% power (two-sided α 0.05), from the observed spread of "
            "the differences. "
        )
    legend += (
        "McNemar: exact test on the test images exactly one of the two final models classifies correctly (b: only "
        "the setup, c: only R); — where the runs saved no per-image results."
    )
    return "\n".join(out + ["", legend])


def _titled(found: list[dict], render, empty: str) -> str:
    """Markdown: every table in ``found`` rendered by ``render``, each under its title (``empty`` for none)."""
    if not found:
        return empty
    parts = []
    for table in found:
        parts += [f"### {table['title']}", "", render(table), ""]
    return "\n".join(parts).rstrip()


def healing_table(records: list[dict]) -> str:
    """Markdown: every table of heal runs, each under its title."""
    return _titled(healing_tables(records), table_markdown, "no heal runs found.")


def _stat(runs: list[dict], key: str, bounds=stats.UNIT, threshold: float | None = None) -> Stat:
    return Stat([value for r in runs if (value := rk.number(r, key)) is not None], bounds, threshold)


def _forget_label(record: dict) -> str:
    budget = (record.get(rk.EXPERIMENT) or {}).get("config", {}).get("adversary", {}).get("budget")
    share = f" ({100 * budget:g}%)" if isinstance(budget, float) and budget < 1 else ""
    return f"{record.get(rk.FORGET_COUNT)}{share} × {record.get(rk.ADVERSARY_SELECTOR)}"


def unlearning_table(records: list[dict]) -> str:
    """Markdown: one row per unlearn experiment (Tables 2, 3 and 6 shape), each figure the mean ± 95% CI over
    its seeds (n); the representative repeat of each seed is chosen on validation, the repeats' test mean and
    standard deviation are reported beside it."""
    exps = experiments(records, rk.UNLEARN)
    if not exps:
        return "no unlearn runs found."
    out = [
        "| dataset | method | forget set | n | BL | unlearned | repeats: mean (std) | GS | random set "
        "| attack strength | time [s] | experiment |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = []
    for exp in exps:
        runs = exp.records
        first = runs[0]
        stds = _stat(runs, rk.UNLEARNED_ACC_STD)
        repeats = _stat(runs, rk.UNLEARNED_ACC_MEAN).cell(n_row=len(runs))
        if stds.values:
            repeats += f" ({100 * stds.mean:.2f})"
        time_s = _stat(runs, rk.UNLEARNED_TIME_S)
        seconds = f"{time_s.mean:.1f}" if time_s.values else "—"
        order = (str(first.get(rk.DATASET)), str(first.get(rk.UNLEARN_METHOD)), str(first.get(rk.ADVERSARY_SELECTOR)))
        line = (
            f"| {first.get(rk.DATASET)} | {first.get(rk.UNLEARN_METHOD)} | {_forget_label(first)} | {len(runs)} "
            f"| {_stat(runs, rk.BASELINE_TEST_ACC).cell()} "
            f"| {_stat(runs, rk.UNLEARNED_TEST_ACC, threshold=stats.collapse_threshold(classes(exp))).cell()} "
            f"| {repeats} | {_stat(runs, rk.GOLD_TEST_ACC).cell(n_row=len(runs))} "
            f"| {_stat(runs, rk.ATTACK_RANDOM_TEST_ACC).cell(n_row=len(runs))} "
            f"| {_stat(runs, rk.ATTACK_STRENGTH, stats.DIFFERENCE).cell(signed=True, n_row=len(runs))} "
            f"| {seconds} | {exp.id} |"
        )
        rows.append(((*order, first.get(rk.FORGET_COUNT) or 0), line))
    out += [line for _, line in sorted(rows, key=lambda t: t[0])]
    out += [
        "",
        "n: seeds. Over seeds: mean [95% interval] (Student t, kept inside [0, 100]; attack strength is a paired "
        "difference, the adversary's drop minus the random set's on the same seed); per seed …: seeds that mix "
        "collapsed and intact unlearned models. " + seeds_sentence([len(e.records) for e in exps]),
    ]
    sisa = [e for e in exps if e.records[0].get(rk.UNLEARN_METHOD) == rk.SISA and rk.SISA_TEST_ACC in e.records[0]]
    if sisa:
        out += [
            "",
            "SISA ensembles before unlearning (the paper's Table 1 shape; mean ± 95% CI over seeds):",
            "",
            "| dataset | shards × slices | epochs per slice | n | test acc | train time [s] |",
            "|---|---|---|---|---|---|",
        ]
        seen = set()
        for exp in sisa:
            r = exp.records[0]
            key = (
                r.get(rk.DATASET),
                r.get(rk.UNLEARN_SHARDS),
                r.get(rk.UNLEARN_SLICES),
                r.get(rk.SISA_EPOCHS_PER_SLICE),
            )
            if key in seen:  # every deletion size of one grid trains the same ensemble
                continue
            seen.add(key)
            t, acc = _stat(exp.records, rk.SISA_TRAIN_TIME_S), _stat(exp.records, rk.SISA_TEST_ACC)
            out.append(
                f"| {r.get(rk.DATASET)} | {r.get(rk.UNLEARN_SHARDS)} × {r.get(rk.UNLEARN_SLICES)} "
                f"| {r.get(rk.SISA_EPOCHS_PER_SLICE)} | {len(exp.records)} | {acc.cell()} "
                f"| {f'{t.mean:.1f}' if t.values else '—'} |"
            )
    return "\n".join(out)


# --------------------------------------------------------------------------- methods
#: a methods table's stages: the unlearned start, the R heal setup, and the best twin metric (chosen on validation)
METHOD_STAGES = ("unlearned", "R", "best twin")
#: per stage: the figures shown, each the record key of a model (test accuracy, forget accuracy, MIA AUC on the
#: forget set vs held-out)
METHOD_FIGURES = (
    ("test", lambda model: rk.accuracy(model, rk.TEST)),
    ("forget", lambda model: rk.accuracy(model, rk.FORGET)),
    ("MIA", lambda model: rk.mia(model, "auc")),
)


def _over_seeds(
    by_seed: dict, key: str, label: str | None = None, bounds=stats.UNIT, threshold: float | None = None
) -> Stat:
    """``key`` over seeds: from the run of setup ``label``, or (None) from the first run of the seed holding it."""
    values = []
    for runs in by_seed.values():
        if label is not None:
            value = runs[label].get(key) if label in runs else None
        else:
            value = next((r.get(key) for r in runs.values() if r.get(key) is not None), None)
        if value is not None:
            values.append(value)
    return Stat(values, bounds, threshold)


def _best_twin(by_seed: dict) -> list[str]:
    """The twin metrics (compared setups other than R) with the highest mean validation accuracy after the
    healing's last epoch (test accuracy where no run records validation); several when they tie."""
    labels = {label for runs in by_seed.values() for label in runs if is_compared(label) and _base(label) != "R"}
    runs = [r for per_seed in by_seed.values() for label, r in per_seed.items() if label in labels]
    split = "val" if all(_at(r, "val", r.get(rk.HEAL_EPOCHS) or 1) is not None for r in runs) else "test"
    cands = {
        label: Stat(
            [
                v
                for per_seed in by_seed.values()
                if label in per_seed
                for v in [_at(per_seed[label], split, per_seed[label].get(rk.HEAL_EPOCHS) or 1)]
                if v is not None
            ]
        )
        for label in labels
    }
    return _choose(cands, True)


def methods_row(exp: Experiment) -> dict:
    """One method's figures over seeds: unlearning time, and test and forget accuracy and MIA AUC of the
    unlearned model, of the R-healed model and of the best twin metric's healed model (heal runs)."""
    by_seed, _ = runs_by_seed(exp)
    first = exp.records[0]
    row = {
        "experiment": exp.id,
        "method": _method(first),
        "seeds": len(by_seed),
        "time": _over_seeds(by_seed, rk.UNLEARNED_TIME_S, bounds=stats.POSITIVE),
        "reference": {
            name: {col: _over_seeds(by_seed, key(model)) for col, key in METHOD_FIGURES}
            for name, model in (("BL", rk.BASELINE), ("GS", rk.GOLD))
        },
        "unlearned": {col: _over_seeds(by_seed, key(rk.UNLEARNED)) for col, key in METHOD_FIGURES},
        "best twin setups": [],
    }
    if first.get(rk.PHASE) != rk.HEAL:
        return row
    row["R"] = {col: _over_seeds(by_seed, key(rk.HEALED), "R") for col, key in METHOD_FIGURES}
    best = _best_twin(by_seed)
    row["best twin setups"] = best
    if best:
        row["best twin"] = {col: _over_seeds(by_seed, key(rk.HEALED), best[0]) for col, key in METHOD_FIGURES}
        row["best twin"]["MIA F/twins"] = _over_seeds(by_seed, rk.HEALED_MIA_TWINS_AUC, best[0])
    return row


def methods_tables(records: list[dict]) -> list[dict]:
    """Per table of heal experiments, then of unlearn experiments: ``title``, ``phase`` and ``rows``, one per
    method."""
    return [
        {"title": f"{phase}: {t.title}", "phase": phase, "rows": [methods_row(e) for e in t.experiments]}
        for phase in (rk.HEAL, rk.UNLEARN)
        for t in tables(experiments(records, phase))
    ]


def _fraction(stat: Stat, n_row: int) -> str:
    """An AUC as a fraction: ``0.612``, or ``0.612 [0.580, 0.640]`` over seeds (never outside [0, 1])."""
    return stat.cell(n_row=n_row, scale=1.0, digits=3)


def _seconds(stat: Stat) -> str:
    return Stat(stat.values, bounds=stats.POSITIVE).cell(scale=1.0, digits=1)


def _figure_cells(figures: dict | None, n_row: int) -> list[str]:
    if figures is None:
        return ["—"] * len(METHOD_FIGURES)
    return [
        _fraction(figures[col], n_row) if col == "MIA" else figures[col].cell(n_row=n_row) for col, _ in METHOD_FIGURES
    ]


def methods_markdown(table: dict) -> str:
    """Markdown: one row per method, BL and GS as reference rows (one per method where they differ)."""
    rows, heal = table["rows"], table["phase"] == rk.HEAL
    stages = METHOD_STAGES if heal else METHOD_STAGES[:1]
    head = "| method | seeds | unlearn time [s] |" + "".join(
        f" {stage} {col} |" for stage in stages for col, _ in METHOD_FIGURES
    )
    head += " best twin | best twin MIA F/twins |" if heal else ""
    width = 3 + len(stages) * len(METHOD_FIGURES) + (2 if heal else 0)
    out = [head, "|" + "---|" * width]
    for name in ("BL", "GS"):
        refs = [r["reference"][name] for r in rows if any(s.values for s in r["reference"][name].values())]
        distinct = {json.dumps({c: s.values for c, s in ref.items()}, sort_keys=True) for ref in refs}
        for r in rows if len(distinct) > 1 else rows[:1] if refs else []:
            label = f"{name} ({r['method']})" if len(distinct) > 1 else name
            cells = _figure_cells(r["reference"][name], r["seeds"]) + ["—"] * (width - 3 - len(METHOD_FIGURES))
            out.append(f"| {label} | {r['seeds']} | — | " + " | ".join(cells) + " |")
    for r in rows:
        cells = [c for stage in stages for c in _figure_cells(r.get(stage), r["seeds"])]
        if heal:
            best = " = ".join(r["best twin setups"]) or "—"
            twins = r.get("best twin", {}).get("MIA F/twins")
            cells += [best, _fraction(twins, r["seeds"]) if twins is not None else "—"]
        out.append(f"| {r['method']} | {r['seeds']} | {_seconds(r['time'])} | " + " | ".join(cells) + " |")
    legend = (
        "Accuracies in %; MIA: ROC AUC of the loss-based attack on the forget set against held-out samples "
        "(0.5: indistinguishable from unseen data)."
    )
    if heal:
        legend += (
            " R and best twin: the healed model after the healing's last epoch; the best twin metric is chosen by "
            "validation accuracy; MIA F/twins: the healed model's AUC separating its twins from the forget set."
        )
    if any(r["seeds"] > 1 for r in rows):
        legend += " Over seeds: mean [95% interval] (Student t, kept inside the range: [0, 100] for accuracies, "
        legend += "[0, 1] for AUCs)."
    legend += " " + seeds_sentence([r["seeds"] for r in rows])
    return "\n".join(out + ["", legend])


def methods_table(records: list[dict]) -> str:
    """Markdown: every methods table, each under its title."""
    return _titled(methods_tables(records), methods_markdown, "no heal or unlearn runs found.")


def fit_table(records: list[dict]) -> str:
    """Markdown: the baselines, one row per fit experiment (mean ± 95% CI over its seeds)."""
    exps = experiments(records, rk.FIT)
    if not exps:
        return "no fit runs found."
    out = ["| dataset | backbone | n | test acc | train time [s] | runs |", "|---|---|---|---|---|---|"]
    for exp in exps:
        r, t = exp.records[0], _stat(exp.records, rk.TRAIN_TIME_S)
        names = ", ".join(
            os.path.relpath(str(x.get(rk.RUN_DIR)), os.path.dirname(str(r.get(rk.RUN_DIR)))) for x in exp.records
        )
        out.append(
            f"| {r.get(rk.DATASET)} | {r.get(rk.BACKBONE)} | {len(exp.records)} "
            f"| {_stat(exp.records, rk.FIT_TEST_ACC).cell()} | {f'{t.mean:.1f}' if t.values else '—'} | {names} |"
        )
    return "\n".join(out)


def to_json(value):
    """Rows made JSON-able (a Stat becomes its mean, n, values, interval and kind; a McNemar test its b, c, p)."""
    if isinstance(value, Stat):
        return value.json()
    if isinstance(value, stats.McNemar):
        return {"b": value.b, "c": value.c, "p": value.p}
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    return value
