"""The record schema (:mod:`healing_pl.records`) holds writers and readers to one set of keys.

Every phase result is built with small real values on digits and composed the way ``RunWriter`` composes a
run's record. Then: (a) every key the writers produce is declared, with its value's type, by the results that
write it, and every declared key is written exactly in the records of its phases; (b) every key the readers
(report, dashboard, W&B report, W&B logging, CLI, docs/figures.py) name is one a writer produces; (c) the report,
the dashboard and the CLI summary show what the writers wrote. No writer or reader spells a key itself.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import pathlib
import re
from types import SimpleNamespace

import pytest

from healing_pl import records as rk
from healing_pl.adversary import SELECTORS
from healing_pl.adversary.ledger import Ledger
from healing_pl.adversary.requests import read_requests
from healing_pl.callbacks.phases import HealSet, Trained, _Checkpoint, _ModelArtifact, _ShardJob
from healing_pl.data.datamodule import HealingDataModule
from healing_pl.models.classifier import Classifier, evaluate
from healing_pl.phases.baseline import Baseline
from healing_pl.phases.config import HealConfig, StreamConfig, TwinsConfig
from healing_pl.phases.evaluate import evaluate_sets
from healing_pl.phases.forget import ForgetSet, request_forget_set
from healing_pl.phases.gold import Gold, distance_to_gold, forget_probabilities
from healing_pl.phases.heal import HealCurve
from healing_pl.phases.identity import identity_record
from healing_pl.phases.mia import mia_phase, mia_twins_phase
from healing_pl.phases.record import run_record, summary_scalars, write_record
from healing_pl.phases.stream import run_stream
from healing_pl.phases.twins import twin_phase
from healing_pl.phases.unlearn import AttackStrength, unlearn_phase
from healing_pl.unlearning import UNLEARNERS, Context
from healing_pl.unlearning.naive import model_hparams
from tests.report.conftest import CONFIG

ROOT = pathlib.Path(__file__).resolve().parents[1]
METHODS = tuple(UNLEARNERS.names())


# --------------------------------------------------------------------------- a fake W&B run
class FakeRun:
    """What the W&B helpers call on a run, keeping the names they log (history), set (summary, config)."""

    id = "fake"

    def __init__(self):
        self.history: set[str] = set()
        self.summary: dict = {}
        self.config = SimpleNamespace(keys=set())
        self.config.update = lambda values, allow_val_change=False: self.config.keys.update(values)

    def log(self, values: dict, step=None) -> None:
        self.history.update(values)

    def define_metric(self, *args, **kwargs) -> None:
        pass

    def log_artifact(self, *args, **kwargs) -> None:
        pass


def lightning_log(run: FakeRun):
    """``log(metrics, step)`` as the stream phase calls it: through Lightning's WandbLogger.log_metrics."""
    from lightning.pytorch.loggers import WandbLogger

    logger = SimpleNamespace(_prefix="", LOGGER_JOIN_CHAR="-", _wandb_init={}, experiment=run)
    return lambda metrics, step: WandbLogger.log_metrics(logger, metrics, step=step)


# --------------------------------------------------------------------------- every phase result, composed
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Every phase result type (small real values on digits), the records composed from them per subcommand
    (``phase -> [records]``), the stream's curve points and what went to a (fake) W&B run."""
    tmp = tmp_path_factory.mktemp("records")
    dm = HealingDataModule("digits", seed=0)
    model = Classifier(backbone="small_cnn", num_classes=10, in_chans=1, image_size=8).eval()
    baseline = Baseline(str(tmp / "baseline.ckpt"), "0" * 64, 1, 0, model_hparams(model))
    context = Context(epochs=1, trainer={"accelerator": "cpu", "devices": 1})
    test = dm.test_dataloader()

    trained = Trained(evaluate(model, test), 1, 0.5, str(tmp / "fit" / "last.ckpt"))
    artifact = _ModelArtifact("baseline-digits-small_cnn-0000000000000000")
    adversary = SELECTORS["class"](budget=10, target_class=3)
    forget = request_forget_set(adversary, model, dm, Ledger(tmp / "unlearn"))
    requests_file = tmp / "requests.jsonl"
    requests_file.write_text("".join(json.dumps({"requester": "u", "sample_id": int(i)}) + "\n" for i in forget.ids))
    source = read_requests(str(requests_file), dm.pool.train)
    forget_requested = request_forget_set(adversary, model, dm, None, requests=source)
    ids = forget.ids
    before = evaluate_sets(model, dm, ids, rk.BASELINE)
    gold = Gold(evaluate_sets(model, dm, ids, rk.GOLD), 1.0, False, forget_probabilities(model, dm, ids))
    to_gold = [distance_to_gold(model, dm, ids, gold, 0.5, prefix) for prefix in (rk.BASELINE, rk.UNLEARNED)]
    sisa = UNLEARNERS["sisa"](shards=2, slices=1, epochs_per_slice=1, cache_dir=None, on_collapse="keep")
    ensemble, unlearned = unlearn_phase(model, baseline, dm, ids, sisa, context)
    random_acc = unlearned.evaluation.test - 0.01
    attack = AttackStrength(random_acc, before.test - unlearned.evaluation.test, before.test - random_acc)
    mias = [mia_phase(m, dm, ids, prefix, 0) for m, prefix in ((model, rk.BASELINE), (model, rk.GOLD))]
    mias.append(mia_phase(ensemble, dm, ids, rk.UNLEARNED, 0))
    twins = twin_phase(TwinsConfig(metric="raw_l2"), model, dm, ids)
    remain_only = twin_phase(TwinsConfig(metric="none"), model, dm, ids)
    curve = HealCurve(2, 0.003, {0: unlearned.evaluation.test, 1: 0.5, 2: 0.6}, 1.0, {0: 0.4, 1: 0.5, 2: 0.6})
    healed = evaluate_sets(model, dm, ids, rk.HEALED)
    healed_to_gold = distance_to_gold(model, dm, ids, gold, healed.forget, rk.HEALED)
    heal_set = HealSet(0.1, 0)
    healed_mias = [
        mia_phase(model, dm, ids, rk.HEALED, 0),
        mia_twins_phase(model, dm, ids, twins.twin_ids, rk.HEALED, 0),
    ]
    saved = _Checkpoint(str(tmp / "unlearned.ckpt"))
    shard = _ShardJob(0, 2, str(tmp / "cache" / "shard0.pt"), 0.5)

    wandb = FakeRun()
    stream_dm = HealingDataModule("digits", seed=0)
    stream = run_stream(
        model,
        baseline,
        stream_dm,
        unlearn=UNLEARNERS["finetune"](epochs=1, cache_dir=None),
        adversary=SELECTORS["class"](budget=1, target_class=3),
        stream=StreamConfig(benign_ratio=0.5, round_size=2, heal=True, n_users=2),
        twins=TwinsConfig(metric="raw_l2"),
        heal=HealConfig(),
        ledger=Ledger(tmp / "stream"),
        context=context,
        log=lightning_log(wandb),
    )
    streamed = dataclasses.replace(stream, source=source, n_user=len(source.requests))

    results = {
        rk.FIT: [[trained, artifact]],
        rk.UNLEARN: [
            [baseline, forget, before, gold, unlearned, attack, *mias, *to_gold, saved],
            [baseline, forget_requested, before, None, unlearned, None, saved],
            [baseline, shard],
        ],
        rk.HEAL: [
            [
                *(baseline, forget, before, gold, unlearned, None, *mias, *to_gold, None, heal_set, healed_to_gold),
                *(twins, curve, healed, *healed_mias),  # the last five: read by position in _distinct
            ],
            [baseline, forget_requested, before, gold, unlearned, None, remain_only, curve, healed],
        ],
        rk.STREAM: [[baseline, stream], [baseline, streamed]],
    }
    records = {
        phase: [run_record(phase, _header(tmp, phase), CONFIG, parts) for parts in variants]
        for phase, variants in results.items()
    }
    points = [p for r in records[rk.STREAM] for p in r[rk.STREAM_CURVE]]
    points += [r["metrics"] for rec in records[rk.STREAM] for r in rec[rk.STREAM_ROUNDS]]
    return SimpleNamespace(results=results, records=records, points=points, wandb=wandb, tmp=tmp, dm=dm)


def _header(tmp, phase: str) -> dict:
    return rk.header(
        dataset="digits",
        backbone="small_cnn",
        run_dir=str(tmp / phase),
        world_size=1,
        device="cpu",
        precision="32",
        threads=1,
    )


def _all(built) -> list[dict]:
    return [r for records in built.records.values() for r in records]


# --------------------------------------------------------------------------- (a) writers keep to the schema
def test_every_key_a_writer_produces_is_declared_with_its_type(built):
    for record in _all(built):
        assert rk.undeclared(record, METHODS) == [], record[rk.PHASE]


def _parts(result) -> list[tuple[object, dict]]:
    """(writer, keys it writes) of a result and of the result it passes on: a forget set or a stream its source's
    keys (a requests file, or the forget set's adversary), the gold standard and the unlearned model their
    evaluation's."""
    keys = dict(result.record())
    inner = getattr(result, "source", None)
    if inner is None:
        inner = result.adversary if isinstance(result, ForgetSet) else getattr(result, "evaluation", None)
    if inner is None:
        return [(result, keys)]
    nested = inner.record()
    return [(inner, nested), (result, {k: v for k, v in keys.items() if k not in nested})]


def test_every_key_is_declared_for_the_result_that_writes_it(built):
    wrong = []
    for variants in built.results.values():
        for result in [r for parts in variants for r in parts if r is not None]:
            for writer, keys in _parts(result):
                names = {cls.__name__ for cls in type(writer).__mro__}
                for name in keys:
                    key = rk.lookup(name, METHODS)
                    if key is None or not names & set(key.writers):
                        wrong.append(f"{type(writer).__name__} writes {name}, declared for {key and key.writers}")
    header = [rk.PHASE, *_header(built.tmp, rk.FIT)]
    wrong += [f"RunWriter writes {k}" for k in header if rk.KEYS[k].writers != ("RunWriter",)]
    identity = identity_record(rk.HEAL, CONFIG, built.results[rk.HEAL][0])
    wrong += [f"identity_record writes {k}" for k in identity if rk.KEYS[k].writers != ("identity_record",)]
    assert not wrong, wrong


def test_every_declared_key_is_written_exactly_in_the_records_of_its_phases(built):
    """A key declared for a phase whose records never hold it (or held by another phase's records) fails."""
    wrong = []
    for name, key in rk.KEYS.items():
        written = {phase for phase, records in built.records.items() if any(name in r for r in records)}
        if written != set(key.phases):
            wrong.append(f"{name}: declared for {sorted(key.phases)}, written in {sorted(written)}")
    assert not wrong, wrong


def test_every_family_has_members_and_they_are_typed(built):
    names = {name for record in _all(built) for name in record}
    for family in rk.FAMILIES:
        assert any(family.match(n) for n in names), f"no writer produces a key of {family.template}"
    heal = built.records[rk.HEAL][0]
    assert rk.per_epoch(heal) == {e: heal[rk.healed_test_acc(e)] for e in (0, 1, 2)}
    assert rk.per_epoch(heal, "val") == {0: 0.4, 1: 0.5, 2: 0.6}
    assert rk.lookup("healed/test/acc_epoch_12") == rk.healed_test_acc(12) and rk.lookup("healed/oops") is None
    assert rk.lookup("sisa/unlearn_time", METHODS) is not None and rk.lookup("sisa/unlearn_time") is None
    assert not rk.Key("x", float, "").accepts(True) and rk.Key("x", float, "").accepts(3)
    assert rk.get({}, rk.HEAL_EPOCHS, 3) == rk.get({rk.HEAL_EPOCHS.name: None}, rk.HEAL_EPOCHS, 3) == 3
    assert rk.number({rk.GOLD_CACHED.name: True}, rk.GOLD_CACHED) is None
    with pytest.raises(ValueError, match="not a key of the family"):
        rk.accuracy("teacher", rk.TEST)


def test_curve_points_and_wandb_names_are_what_the_stream_and_the_helpers_write(built):
    for point in built.points:
        assert set(point) <= {k.name for k in rk.POINT_KEYS}, point
    assert {rk.stream_history(k).name for k in rk.POINT_KEYS if k != rk.CURVE_ROUND} <= built.wandb.history
    assert rk.WANDB_STEP.name in built.wandb.history


# --------------------------------------------------------------------------- (b) readers read what is written
#: the modules that read records (whole, or the named functions): every rk name they use must be written
READERS = {
    "healing_pl/report/tables.py": None,
    "healing_pl/report/dashboard.py": None,
    "healing_pl/report/wandb_report.py": None,
    "healing_pl/tracking.py": None,
    "healing_pl/cli.py": ("phase_summary", "after_fit"),
    "healing_pl/phases/record.py": ("write_record", "summary_scalars"),
    "docs/figures.py": None,
}
#: the modules that write records (whole, or the named functions)
WRITERS = {
    **{f"healing_pl/phases/{m}.py": None for m in ("baseline", "forget", "gold", "unlearn", "twins", "heal")},
    **{f"healing_pl/phases/{m}.py": None for m in ("evaluate", "mia", "stream", "identity", "record")},
    "healing_pl/callbacks/phases.py": None,
    "healing_pl/adversary/selectors/base.py": ("record",),
    "healing_pl/adversary/requests.py": ("record",),
}
#: W&B names that no test here sees logged, and why
NOT_SEEN = {rk.GRID_TABLE: "logged by log_grid_table in a W&B run of its own (tests/test_wandb.py covers it)"}


def _scopes(path: str, names) -> list[ast.AST]:
    tree = ast.parse((ROOT / path).read_text())
    if names is None:
        return [tree]
    found = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name in names]
    assert {n.name for n in found} >= set(names), f"{path} lost {names}"
    return found


def _rk_names(path: str, names) -> set[str]:
    """The ``rk.<name>`` attributes a module (or its named functions) uses."""
    return {
        n.attr
        for scope in _scopes(path, names)
        for n in ast.walk(scope)
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "rk"
    }


def _wandb_names(built) -> set[str]:
    """What the W&B helpers log, set in the summary and in the config (on a fake run) for a heal record."""
    from healing_pl.tracking import log_heal_chart, log_heal_epoch, log_twins

    run = built.wandb
    log_heal_epoch(run, 0, test=0.5, val=0.5, baseline=0.9, gold=0.8)
    log_heal_chart(run, {0: 0.5, 1: 0.6}, {0: 0.5, 1: 0.6}, 0.9, 0.8)
    log_twins(run, [{"request_id": 0, "twin_id": 1, "score": 0.1}], built.dm.pool.train)
    heal = dict(built.records[rk.HEAL][0])
    folder = built.tmp / "written"
    write_record(str(folder), heal, _logger(run))
    return run.history | set(run.summary) | run.config.keys


def _logger(run: FakeRun):
    """A Lightning WandbLogger whose experiment is ``run`` (what write_record's W&B calls reach)."""
    from lightning.pytorch.loggers import WandbLogger

    class Logger(WandbLogger):
        experiment = run

    return object.__new__(Logger)


def test_every_key_the_readers_name_is_written(built):
    written = {name for record in _all(built) for name in record}
    points = {name for point in built.points for name in point}
    wandb = _wandb_names(built)
    loaded = built.tmp / "loaded"
    loaded.mkdir()
    (loaded / "results.json").write_text(json.dumps(built.records[rk.FIT][0]))
    from healing_pl.report.tables import load_records

    loader = set(load_records([str(loaded)])[0])
    wrong = []
    for path, names in READERS.items():
        for attr in sorted(_rk_names(path, names)):
            value = getattr(rk, attr, None)
            if value is None:
                wrong.append(f"{path}: rk.{attr} does not exist")
            elif isinstance(value, rk.Family):
                if not any(value.match(n) for n in written):
                    wrong.append(f"{path}: no writer produces a key of {value.template}")
            elif isinstance(value, rk.Key):
                seen = {rk.RECORD: written | loader, rk.POINT: points}.get(value.where, wandb)
                if value not in seen and value not in NOT_SEEN:
                    wrong.append(f"{path}: rk.{attr} ({value}, {value.where}) is never written")
    assert not wrong, wrong


def test_the_wandb_report_plots_names_the_runs_log(built):
    """The W&B report's summary metrics are final scalars of the records; its history keys are logged."""
    from healing_pl.report import wandb_report

    def used(tree) -> set:
        return {
            getattr(rk, n.attr)
            for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "rk"
        }

    tree = ast.parse(pathlib.Path(wandb_report.__file__).read_text())
    summary = {
        key
        for call in ast.walk(tree)
        if isinstance(call, ast.Call) and getattr(call.func, "attr", None) == "SummaryMetric"
        for key in used(call)
    }
    scalars = {k for records in built.records.values() for r in records for k in summary_scalars(r)}
    assert summary and summary <= scalars, summary - scalars
    wandb = _wandb_names(built)
    logged = {k for k in used(tree) if isinstance(k, rk.Key) and k.where in (rk.HISTORY, rk.SUMMARY, rk.CONFIG)}
    assert logged and logged <= wandb, logged - wandb
    assert rk.stream_history(rk.CURVE_TEST_ACC) in wandb


#: a key-like literal: slash-separated lowercase words (``baseline/test/acc``; ``healed/{}/acc`` for an f-string)
KEY_LITERAL = re.compile(r"[a-z_{}][a-z0-9_{}]*(?:/[a-z0-9_{}]+)+")
#: key-like literals allowed in the writers and readers, and why (none today)
ALLOWED: dict[tuple[str, str], str] = {}


def _key_literals(path: str, names) -> list[str]:
    """Key-like string literals (docstrings aside) in a module or its named functions."""
    tree = ast.parse((ROOT / path).read_text())
    docs = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    found = []
    for scope in _scopes(path, names):
        for node in ast.walk(scope):
            if isinstance(node, ast.JoinedStr):
                text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                text = node.value
            else:
                continue
            named = re.search("[a-z]", text.replace("{}", ""))  # not a template of values only ('{}/{}')
            if named and KEY_LITERAL.fullmatch(text) and (path, text) not in ALLOWED:
                found.append(f"{path}:{node.lineno}: {text!r}")
    return found


@pytest.mark.parametrize("path", [*WRITERS, *READERS])
def test_no_writer_or_reader_spells_a_key(path):
    names = {**WRITERS, **READERS}[path]
    assert _key_literals(path, names) == [], "name the key through healing_pl.records"


# --------------------------------------------------------------------------- (c) the report shows what was written
def _distinct(built) -> dict[str, list[dict]]:
    """The built records with a distinct, known value in every figure the report shows."""
    variants = built.results
    baseline, forget, before, gold, unlearned, _, *rest = variants[rk.UNLEARN][0]
    ev = lambda e, test, forget: dataclasses.replace(e, test=test, remain=test, forget=forget)  # noqa: E731
    before = ev(before, 0.9437, 0.4719)
    unlearned = dataclasses.replace(unlearned, evaluation=ev(unlearned.evaluation, 0.6021, 0.3010))
    gold = dataclasses.replace(gold, evaluation=ev(gold.evaluation, 0.9123, 0.0512))
    attack = AttackStrength(0.7034, 0.9437 - 0.6021, 0.9437 - 0.7034)
    mias = [dataclasses.replace(m, auc=auc) for m, auc in zip(rest[:3], (0.8111, 0.5022, 0.6033))]
    trained = dataclasses.replace(variants[rk.FIT][0][0], test={"acc": 0.9655, "loss": 0.1, "acc_class": [0.9] * 10})
    twins, curve, healed, healed_mia, twins_mia = variants[rk.HEAL][0][-5:]
    curve = HealCurve(2, 0.003, {0: 0.6021, 1: 0.8517, 2: 0.8828}, 1.0, {0: 0.6, 1: 0.85, 2: 0.88})
    healed, healed_mia = ev(healed, 0.8828, 0.4414), dataclasses.replace(healed_mia, auc=0.5544)
    unlearn = [baseline, forget, before, gold, unlearned, attack, *mias]
    heal = [baseline, forget, before, gold, unlearned, *mias, twins, curve, healed, healed_mia, twins_mia]
    stream = variants[rk.STREAM][0][1]
    parts = {rk.FIT: [trained], rk.UNLEARN: unlearn, rk.HEAL: heal, rk.STREAM: [baseline, stream]}
    return {phase: run_record(phase, _header(built.tmp, phase), CONFIG, p) for phase, p in parts.items()}


def _cells(text: str, start: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(start))
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_the_report_shows_what_the_writers_wrote(built):
    from healing_pl.report.dashboard import dashboard_html
    from healing_pl.report.markdown import report

    records = _distinct(built)
    text = report(list(records.values()), stderr=None)
    fit = _cells(text.split("## Unlearning")[0], "| digits")
    assert fit[3] == "96.55"
    unlearning = _cells(text.split("## Unlearning")[1], "| digits")
    assert unlearning[4:6] == ["94.37", "60.21"] and unlearning[7:10] == ["91.23", "70.34", "+10.13"]
    healing = _cells(text.split("## Healing")[1], "| digits")
    assert healing[4:6] == ["94.37", "91.23"] and healing[6].startswith("60.21")
    assert healing[7].startswith("85.17 (T-raw_l2)") and healing[9].startswith("88.28 (T-raw_l2)")
    methods = text.split("## Methods")[1]
    assert _cells(methods, "| BL |")[3:6] == ["94.37", "47.19", "0.811"]
    heal_methods = _cells(methods, "| sisa |")
    assert heal_methods[3:6] == ["60.21", "30.10", "0.603"] and heal_methods[9:11] == ["88.28", "44.14"]
    page = dashboard_html(list(records.values()))
    stream = records[rk.STREAM]
    final = f"{100 * stream[rk.STREAM_FINAL_TEST_ACC]:.2f}"
    assert f"<td>{100 * stream[rk.BASELINE_TEST_ACC]:.2f}</td><td>{final}</td>" in page
    assert "<td>94.37</td>" in page and "<td>96.55</td>" in page


def test_the_cli_summary_shows_what_the_writers_wrote(built):
    from healing_pl.cli import phase_summary

    records = _distinct(built)
    lines = phase_summary(records[rk.HEAL]).splitlines()
    assert lines[0] == "forget set: 10 samples chosen by 'class'"
    for label, value in (("baseline", 0.9437), ("gold standard", 0.9123), ("unlearned", 0.6021)):
        assert f"  {label:<24} test accuracy {value:.4f}" in lines
    assert f"  {'healed, 1 epoch':<24} test accuracy 0.8517" in lines
    assert f"  {'healed, 2 epochs':<24} test accuracy 0.8828" in lines
    requested = built.records[rk.UNLEARN][1]
    assert phase_summary(requested).splitlines()[0].endswith(f"requested in {requested[rk.REQUESTS_FILE]}")
