"""The HTML dashboard, rendered in a real headless Chromium (the W&B Report: test_wandb_report.py)."""

import html
import json
import re

import pytest
import yaml

from healing_pl import records as rk
from healing_pl.main import main
from healing_pl.phases.evaluate import Evaluation, save_correctness
from healing_pl.report import stats
from healing_pl.report.dashboard import (
    ImageSource,
    curve_series,
    dashboard_html,
    fit_axis,
    forest_entries,
    headline,
    twin_rows,
)
from healing_pl.report.tables import healing_tables, load_records
from tests.report.browser import find_browser, render
from tests.report.conftest import CONFIG, config, method, stream_record, unlearn_record

#: the heal setups of the fixtures: R, two twin metrics and the random twins (a control)
METRICS = ("none", "raw_l2", "feat_cosine", "random")
PAIRS = [{"request_id": q, "twin_id": q + 1, "score": 0.5} for q in range(0, 20, 2)]


def heal_runs(make_record, seeds, methods=("fisher",), init=None) -> list[dict]:
    """Heal records of every setup, seed and method; each with its distance to the gold standard on the forget
    set. ``init``: the unlearned start per seed (default 0.5)."""
    out = []
    for name in methods:
        cfg = config(unlearn=method(name))
        for seed in seeds:
            start = 0.5 if init is None else init[seed]
            for i, metric in enumerate(METRICS):
                test = [0.85 + i / 100 + seed / 200, 0.9 - i / 100 + seed / 300]
                twins = PAIRS if metric != "none" else ()
                r = make_record(
                    metric, test, seed=seed, pairs=twins, cfg=cfg, init=start, run=f"{name}-{metric}-{seed}"
                )
                for model, gap, kl in ((rk.BASELINE, 1.0, 2.0), (rk.UNLEARNED, -0.5, 1.2), (rk.HEALED, i / 10, 0.2)):
                    r[rk.gold_distance(model, "gap")], r[rk.gold_distance(model, "kl")] = gap, kl
                out.append(r)
    return out


def write_runs(folder, records):
    for r in records:
        run = folder / r[rk.RUN_DIR].replace("/", "_")
        run.mkdir(parents=True)
        (run / "results.json").write_text(json.dumps(r))
        (run / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    return folder


@pytest.fixture
def runs(tmp_path, make_record):
    """Heal runs of two methods over two seeds with twins of digits samples, an unlearn run and a stream run."""
    records = heal_runs(make_record, (0, 1), methods=("fisher", "influence"))
    records += [unlearn_record(0, 0.6, bl=0.94, run="u"), stream_record([0.94, 0.9, 0.92], run="s")]
    return write_runs(tmp_path / "runs", records)


def intervals(page: str) -> list[tuple[str, float, float]]:
    """Every numeric interval ``[low, high]`` the page prints (its text, tags removed), with its text."""
    text = html.unescape(re.sub(r"<[^>]+>", " ", page.split("<body>")[-1])).replace("−", "-")
    number = r"([+-]?\d+(?:\.\d+)?)"
    return [(m.group(0), float(m.group(1)), float(m.group(2))) for m in re.finditer(rf"\[{number}, {number}\]", text)]


def test_dashboard_renders_in_headless_chromium(runs, tmp_path):
    out = tmp_path / "dashboard.html"
    assert main(["report", str(runs), "--output", str(out)]) == 0
    page = out.read_text()
    assert "http://" not in page and "https://" not in page and "<script" not in page and "±" not in page
    # a headline per experiment, the methods view, one twin grid (the second method's twins are the same)
    assert page.count('<p class="headline">') == 2 and "Methods: one row per unlearning method" in page
    assert page.count("<summary>Twins (") == 2 and "The same twins as fisher above" in page
    assert page.count("<svg ") == 2 * 3  # per experiment: setup − R, − T-random, − GS
    binary = find_browser()
    if binary is None:
        pytest.skip("no headless Chromium: apt-get install chromium-headless-shell (CI installs it).")
    shown = render(binary, str(out), widths=(1400, 900))
    assert shown["errors"] == [] and shown["title"] == "healing-pl report"
    assert len(shown["headlines"]) == 2 and all(" vs R after 2 heal epochs: " in h for h in shown["headlines"])
    assert all("n = 2 seeds" in h for h in shown["headlines"])
    for width, layout in shown["layout"].items():
        # no sideways scroll, with the collapsed sections closed and open; nothing sticks out of the page
        assert layout["closed"][0] <= layout["closed"][1] and layout["open"][0] <= layout["open"][1], width
        assert layout["outside"] == [], (width, layout["outside"])
        # every figure drawn: SVGs with content and a size, images decoded and shown
        assert len(layout["svgs"]) == 6 and all(n > 10 and w > 100 and h > 50 for n, w, h in layout["svgs"])
        assert len(layout["images"]) == 5 and all(n > 0 and w > 100 for n, w in layout["images"])
        assert all(w > 0 and h > 0 for w, h in layout["canvases"])
        shot = tmp_path / f"dashboard-{width}.png"
        shot.write_bytes(layout["screenshot"])
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    assert shown["layout"][900]["images"][0][1] <= 900  # the accuracy curves shrink to the page


def test_a_two_seed_report_prints_no_interval_outside_its_range(tmp_path, make_record):
    # the unlearned start of the two seeds: 25% and 99%: its t interval (t = 12.71) spans about -408% to 532%
    records = heal_runs(make_record, (0, 1), init={0: 0.25, 1: 0.99})
    page = dashboard_html(records)
    found = intervals(page)
    assert len(found) > 30 and "±" not in page
    for text, low, high in found:
        assert -100 <= low <= high <= 100, text
        if not text.startswith(("[+", "[-")):  # an accuracy (unsigned): inside [0, 100]
            assert 0 <= low <= high <= 100, text
    (row,) = healing_tables(records)[0]["rows"]
    bands = curve_series(row)
    assert all(0 <= v <= 100 for s in bands.values() for v in s["low"] + s["high"] if v is not None)
    assert bands["R"]["low"][0] == 0.0 and bands["R"]["high"][0] == 100.0  # the start's band, cut at the range
    assert "n = 2 seeds" in headline(row) and page.count("n = 1") == 1  # the legend at the top only


def test_a_one_seed_report_says_n_1_and_prints_no_interval(tmp_path, make_record):
    records = heal_runs(make_record, (0,))
    page = dashboard_html(records)
    (row,) = healing_tables(records)[0]["rows"]
    assert headline(row) == (
        "fisher: T-raw_l2 (best twin setup on validation) vs R after 2 heal epochs: -1.00 points, n = 1: no "
        "uncertainty (one seed cannot tell setups apart)."
    )
    section = page.split("<h2>Healing</h2>")[1].split("<details><summary>The full table")[0]
    assert intervals(section) == [] and section.count("n = 1: no uncertainty") >= 4
    assert "(n = 1)" in section  # the forest plots' values


def _row(make_record, diffs: list[float], seeds=(0, 1, 2)) -> dict:
    """A row whose T-raw_l2 minus R after 2 epochs is ``diffs`` (one per seed), the best on validation."""
    records = []
    for seed, d in zip(seeds, diffs):
        records.append(make_record("none", [0.9, 0.9], [0.8, 0.8], seed=seed))
        records.append(make_record("raw_l2", [0.9, 0.9 + d], [0.85, 0.85], seed=seed, pairs=PAIRS))
        records.append(make_record("random", [0.9, 0.95], [0.95, 0.95], seed=seed, pairs=PAIRS))
    (row,) = healing_tables(records)[0]["rows"]
    return row


def test_the_headline_states_the_paired_difference_and_what_the_seeds_can_detect(make_record):
    # +0.4, +0.5, +0.6 points: mean +0.50, sd 0.1, t(0.975, 2) = 4.303: [+0.25, +0.75]
    row = _row(make_record, [0.004, 0.005, 0.006])
    assert headline(row) == (
        "fisher: T-raw_l2 (best on validation) vs R after 2 heal epochs: +0.50 points [+0.25, +0.75], n = 3 seeds "
        "(better)."
    )
    # +0.5, -0.5, +0.3: the interval holds 0; the bound is the interval's farthest end, the MDE the paired one's
    row = _row(make_record, [0.005, -0.005, 0.003])
    paired = stats.differences([0.5, -0.5, 0.3], bounds=None)
    bound = max(abs(paired.interval.low), abs(paired.interval.high))
    assert headline(row) == (
        f"fisher: no twin setup differs from R by more than {bound:.2f} points at n = 3 seeds after 2 heal epochs "
        f"(every paired 95% interval contains 0; the smallest difference these seeds detect (80% power) is "
        f"{paired.mde:.2f} points); T-raw_l2 (best on validation): +0.10 points [{paired.interval.low:+.2f}, "
        f"{paired.interval.high:+.2f}]."
    )


def test_a_control_is_never_called_best_and_its_twins_show_no_score(make_record):
    # T-random has the highest validation and test accuracy: still a control
    row = _row(make_record, [0.004, 0.005, 0.006])
    page = dashboard_html([])  # an empty report is a page too
    assert "no finished runs found" in page
    assert "T-random" not in headline(row) and row["best N/2"] == ["T-raw_l2"]
    tags = {e["label"]: e["tag"] for e in forest_entries(row, "R")}
    assert tags == {"T-raw_l2": "best on val.", "T-random": "control"}
    runs = {"R": [], "T-raw_l2": [{rk.TWINS_PAIRS: PAIRS}], "T-random": [{rk.TWINS_PAIRS: PAIRS}]}
    assert [(label, scores) for label, _, scores in twin_rows(row, runs)] == [("T-raw_l2", True), ("T-random", False)]


def test_the_curve_axis_fits_the_data_and_stays_inside_0_100():
    low, high = fit_axis([96.1, 96.5, 96.9, 97.0])
    assert 95.5 < low < 96.1 and 97.0 < high < 97.6
    assert fit_axis([-5.0, 120.0]) == (0.0, 100.0) and fit_axis([99.9, 100.0])[1] == 100.0
    assert fit_axis([50.0]) == pytest.approx((49.69, 50.31))


def test_the_attacked_class_accuracy_comes_from_the_per_image_results(tmp_path, make_record):
    records = [r for r in heal_runs(make_record, (0, 1)) if r[rk.HEAL_SETUP] in ("R", "T-raw_l2")]
    folder = write_runs(tmp_path / "runs", records)
    labels = None
    for run in folder.iterdir():
        (run / "splits.json").write_text(json.dumps({"splits": {"test": list(range(60))}}))
        labels = labels or ImageSource().test_labels(str(run))
        r_setup = json.loads((run / "results.json").read_text())[rk.HEAL_SETUP] == "R"
        correct = {  # class 3 (the attacked class): BL and GS right, unlearned wrong, R right on every third image
            rk.BASELINE: [True] * 60,
            rk.GOLD: [True] * 60,
            rk.UNLEARNED: [y != 3 for y in labels],
            rk.HEALED: [y != 3 or (i % 3 == 0 or not r_setup) for i, y in enumerate(labels)],
        }
        evaluations = [Evaluation(m, 0.9, 0.9, 0.0, bytes(int(c) for c in bits)) for m, bits in correct.items()]
        save_correctness(str(run), evaluations)
    threes = [i for i, y in enumerate(labels) if y == 3]
    r_acc = 100 * sum(i % 3 == 0 for i in threes) / len(threes)
    assert 0 < r_acc < 100
    page = dashboard_html(load_records([str(folder)]))
    section = page.split("<h4>The attacked class (class 3)</h4>")[1].split("</table>")[0]
    assert "<tr><td>unlearned</td><td>2</td><td>0.00" in section
    assert f"<tr><td>healed: R</td><td>2</td><td>{r_acc:.2f}" in section
    # T-raw_l2 minus R, paired by seed on the same test images: the same difference in both seeds
    diff = f"{100 - r_acc:+.2f}"
    assert f'<td>{diff}<span class="ci">[{diff}, {diff}]</span></td>' in section.split("healed: T-raw_l2")[1]
    # runs without per-image results: the forget set stands for the class, and the page says so
    assert "saved no per-image test results" in dashboard_html(records)


def test_twin_images_are_skipped_with_a_reason_when_the_dataset_cannot_be_read(runs, tmp_path):
    for folder in runs.iterdir():
        cfg = yaml.safe_load((folder / "config.yaml").read_text())
        cfg["data"]["dataset"] = "afhq"
        (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "d.html"
    assert main(["report", str(runs), "--output", str(out)]) == 0
    page = out.read_text()
    assert page.count("twin images skipped (dataset &#x27;afhq&#x27; not found at") == 1  # one grid per experiment
    assert page.count("<img ") == 4  # two accuracy-curve figures, adversaries and stream


def test_run_records_its_experiment_identity(tmp_path, configs_dir):
    quiet = ["--trainer.enable_progress_bar=false", "--wandb.enabled=false"]
    fit = tmp_path / "fit"
    args = ["--config", f"{configs_dir}/digits.yaml", *quiet]
    assert main(["fit", *args, f"--run_dir={fit}", "--trainer.max_epochs=1"]) == 0
    heal = ["heal", *args, f"--ckpt_path={fit}/checkpoints/last.ckpt", "--adversary=ClassSelector"]
    heal += ["--adversary.target_class=3", "--adversary.budget=5", "--unlearn=Fisher", "--unlearn.alpha=1e-7"]
    heal += ["--heal.epochs=1", "--heal.gold=false", f"--unlearn.cache_dir={tmp_path / 'cache'}", "--wandb.group=tiny"]
    assert main([*heal, f"--run_dir={tmp_path / 'a'}", "--twins.metric=null"]) == 0
    assert main([*heal, f"--run_dir={tmp_path / 'b'}", "--twins.metric=RawL2", "--seed_everything=4"]) == 0
    a, b = (json.loads((tmp_path / x / "results.json").read_text()) for x in "ab")
    assert a[rk.EXPERIMENT_ID] == b[rk.EXPERIMENT_ID] and len(a[rk.EXPERIMENT_ID]) == 12
    assert a[rk.EXPERIMENT_SEEDS]["seed_everything"] == 0 and b[rk.EXPERIMENT_SEEDS]["seed_everything"] == 4
    assert a[rk.EXPERIMENT]["baseline"]["sha256"] == a[rk.BASELINE_SHA256]
    assert a[rk.EXPERIMENT]["config"]["wandb"] == {"group": "tiny"} and "run_dir" not in a[rk.EXPERIMENT]["config"]
    assert json.loads((tmp_path / "fit" / "results.json").read_text())[rk.EXPERIMENT]["baseline"] is None
