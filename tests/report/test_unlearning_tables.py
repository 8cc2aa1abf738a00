"""The unlearning and baseline tables aggregate an experiment's seeds: mean ± 95% CI, never a mix."""

import copy

from scipy import stats

from healing_pl.phases.baseline import Baseline
from healing_pl.phases.identity import identity_record
from healing_pl.report.tables import fit_table, unlearning_table
from tests.report.conftest import HPARAMS, config


def unlearn_record(seed, acc, *, method="fisher", alpha=1e-6, gs=0.9, time_s=2.0, **extra):
    cfg = config(seed_everything=seed, unlearn__seed=seed, unlearn__method=method, unlearn__alpha=alpha)
    cfg["data"]["seed"] = seed
    baseline = Baseline(path=cfg["ckpt_path"], sha256=f"{seed}" * 64, epochs=4, seed=seed, hparams=HPARAMS)
    record = {
        "phase": "unlearn",
        "dataset": "digits",
        "backbone": "small_cnn",
        "run_dir": f"runs/u/seed-{seed}/unlearn-{method}-{alpha}",
        "adversary/selector": "class",
        "forget/count": 10,
        "unlearn/method": method,
        "baseline/test/acc": 0.95,
        "unlearned/test/acc": acc,
        "unlearned/acc_mean": acc,
        "unlearned/acc_std": 0.01,
        "unlearned/time_s": time_s,
        "gold/test/acc": gs,
        **extra,
    }
    return record | identity_record("unlearn", copy.deepcopy(cfg), [baseline])


def _row(text: str, needle: str) -> list[str]:
    line = next(line for line in text.splitlines() if needle in line)
    return [c.strip() for c in line.strip("|").split("|")]


def test_seeds_of_one_experiment_make_one_row_with_a_t_interval():
    accs = [0.80, 0.84, 0.86]
    text = unlearning_table([unlearn_record(s, a) for s, a in enumerate(accs)])
    rows = [line for line in text.splitlines() if line.startswith("| digits")]
    assert len(rows) == 1
    cells = _row(text, "| digits")
    assert cells[3] == "3"
    low, high = stats.t.interval(0.95, 2, loc=sum(accs) / 3, scale=stats.sem(accs))
    assert cells[5] == f"{100 * sum(accs) / 3:.2f} ± {100 * (high - low) / 2:.2f}"
    assert cells[10] == "2.0"


def test_two_strengths_are_two_rows_never_averaged():
    records = [unlearn_record(s, 0.8, alpha=1e-6) for s in (0, 1)] + [
        unlearn_record(s, 0.5, alpha=1e-5) for s in (0, 1)
    ]
    text = unlearning_table(records)
    rows = [line for line in text.splitlines() if line.startswith("| digits")]
    assert len(rows) == 2
    assert {_row(line, "| digits")[5] for line in rows} == {"80.00 ± 0.00", "50.00 ± 0.00"}


def test_sisa_ensembles_are_listed_once_per_grid():
    extra = {"sisa/test/acc": 0.93, "sisa/train_time_s": 12.0, "sisa/epochs_per_slice": 4}
    records = [
        unlearn_record(s, 0.92, method="sisa", alpha=1e-6, **extra, **{"unlearn/shards": 3, "unlearn/slices": 5})
        for s in (0, 1)
    ]
    text = unlearning_table(records)
    assert "SISA ensembles before unlearning" in text
    assert _row(text, "| digits | 3 × 5")[4] == "93.00 ± 0.00"


def test_baselines_aggregate_their_seeds():
    records = []
    for seed, acc in ((0, 0.96), (1, 0.98)):
        cfg = config(seed_everything=seed)
        record = {
            "phase": "fit",
            "dataset": "digits",
            "backbone": "small_cnn",
            "run_dir": f"runs/g/seed-{seed}/baseline",
            "test/acc": acc,
            "train/time_s": 10.0 + seed,
        }
        records.append(record | identity_record("fit", cfg, []))
    cells = _row(fit_table(records), "| digits")
    low, high = stats.t.interval(0.95, 1, loc=0.97, scale=stats.sem([0.96, 0.98]))
    assert cells[2] == "2" and cells[3] == f"97.00 ± {100 * (high - low) / 2:.2f}" and cells[4] == "10.5"
