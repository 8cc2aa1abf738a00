"""The unlearning and baseline tables aggregate an experiment's seeds: mean [95% interval], never a mix."""

from scipy import stats

from healing_pl import records as rk
from healing_pl.report.tables import fit_table, unlearning_table
from tests.report.conftest import config, fit_record, method, unlearn_record


def fisher(alpha):
    return config(unlearn__alpha=alpha)


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
    assert cells[5] == f"{100 * sum(accs) / 3:.2f} [{100 * low:.2f}, {100 * high:.2f}]"
    assert cells[10] == "2.0"


def test_two_strengths_are_two_rows_never_averaged():
    records = [unlearn_record(s, 0.8, cfg=fisher(1e-6)) for s in (0, 1)] + [
        unlearn_record(s, 0.5, cfg=fisher(1e-5)) for s in (0, 1)
    ]
    text = unlearning_table(records)
    rows = [line for line in text.splitlines() if line.startswith("| digits")]
    assert len(rows) == 2
    assert {_row(line, "| digits")[5] for line in rows} == {"80.00 [80.00, 80.00]", "50.00 [50.00, 50.00]"}


def test_sisa_ensembles_are_listed_once_per_grid():
    # what SISA reports of its ensemble (the method's info, recorded as sisa/<info>)
    reported = {rk.SISA_TEST_ACC: 0.93, rk.SISA_TRAIN_TIME_S: 12.0, rk.SISA_EPOCHS_PER_SLICE: 4}
    info = {rk.METHOD_INFO.match(key)["info"]: value for key, value in reported.items()}
    sisa = config(unlearn=method("sisa", shards=3, slices=5))
    records = [unlearn_record(s, 0.92, cfg=sisa, info=info) for s in (0, 1)]
    assert all(r[key] == value for r in records for key, value in reported.items())
    text = unlearning_table(records)
    assert "SISA ensembles before unlearning" in text
    assert _row(text, "| digits | 3 × 5")[4] == "93.00 [93.00, 93.00]"


def test_baselines_aggregate_their_seeds():
    records = [fit_record(seed, acc, time_s=10.0 + seed) for seed, acc in ((0, 0.96), (1, 0.98))]
    cells = _row(fit_table(records), "| digits")
    low, high = stats.t.interval(0.95, 1, loc=0.97, scale=stats.sem([0.96, 0.98]))
    assert high > 1  # the t interval passes 100%: two seeds print it cut at the range, never past it
    assert cells[2] == "2" and cells[3] == f"97.00 [{100 * low:.2f}, 100.00]" and cells[4] == "10.5"
