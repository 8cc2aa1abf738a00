"""The unlearn and heal subcommands, the grid runner and the report, end to end on digits."""

import json
import os

import pytest
import torch

from healing_pl.main import main
from healing_pl.models.classifier import load_classifier

QUIET = ["--trainer.enable_progress_bar=false", "--wandb.enabled=false"]


@pytest.fixture(scope="module")
def baseline(digits_baseline):
    return digits_baseline  # the session's one-epoch digits fit


def _heal_args(configs_dir, baseline, run_dir, *extra):
    return [
        "heal",
        "--config",
        f"{configs_dir}/digits.yaml",
        f"--ckpt_path={baseline}",
        f"--run_dir={run_dir}",
        "--adversary=ClassSelector",
        "--adversary.target_class=3",
        "--adversary.budget=10",
        "--unlearn=Fisher",
        "--unlearn.alpha=1e-6",  # the one-epoch baseline diverges at 1e-5
        "--unlearn.repeats=2",
        f"--unlearn.cache_dir={run_dir.parent / 'cache'}",
        "--heal.epochs=2",
        *QUIET,
        *extra,
    ]


def test_heal_end_to_end_records_every_figure(in_tmp, configs_dir, baseline):
    run = in_tmp / "heal"
    assert main(_heal_args(configs_dir, baseline, run, "--twins.metric=RawL2")) == 0
    r = json.loads((run / "results.json").read_text())
    splits = torch.load(baseline, weights_only=False)["HealingDataModule"]["splits"]
    primary, backup = set(splits["primary"]), set(splits["backup"])
    # the forget set is 10 primary samples of class 3, twins come from the backup set
    assert r["forget/count"] == 10 and r["forget/classes"][3] == 10 and set(r["forget/ids"]) <= primary
    twins = [p["twin_id"] for p in r["twins/pairs"]]
    assert len(set(twins)) == 10 and set(twins) <= backup and r["twins/same_class"] == 1.0
    assert r["heal/train_size"] == len(primary) - 10 + 10
    for key in (
        "baseline/test/acc",
        "gold/test/acc",
        "unlearned/test/acc",
        "unlearned/acc_mean",
        "unlearned/acc_std",
        "healed/test/acc_epoch_1",
        "healed/test/acc_epoch_2",
        "heal/epochs",
    ):
        assert r[key] is not None, key
    assert len(r["unlearned/acc_repeats"]) == 2 and r["heal/setup"] == "T-raw_l2"
    # every request and every twin is in the run's ledger, once
    lines = [json.loads(x) for x in (run / "ledger.jsonl").read_text().splitlines()]
    assert sorted(x["sample_id"] for x in lines if x["type"] == "request") == sorted(r["forget/ids"])
    assert sorted(x["twin_id"] for x in lines if x["type"] == "twin") == sorted(twins)
    # the healed model is saved and loads as a Classifier
    healed = load_classifier(str(run / "checkpoints" / "last.ckpt"))
    assert healed.hparams.backbone == "small_cnn"


def test_heal_on_remain_only_and_cache_reuse(in_tmp, configs_dir, baseline):
    first, second = in_tmp / "a", in_tmp / "b"
    assert main(_heal_args(configs_dir, baseline, first, "--twins.metric=null")) == 0
    assert main(_heal_args(configs_dir, baseline, second, "--twins.metric=FeatCosine")) == 0
    a, b = (json.loads((p / "results.json").read_text()) for p in (first, second))
    assert a["twins/count"] == 0 and a["heal/setup"] == "R" and a["heal/train_size"] == a["primary/count"] - 10
    # the same forget set, unlearned model and gold standard (cached) start both setups
    assert a["forget/ids"] == b["forget/ids"]
    assert a["unlearned/test/acc"] == b["unlearned/test/acc"] and a["gold/test/acc"] == b["gold/test/acc"]
    assert b["gold/cached"] is True


def test_unlearn_subcommand_saves_a_loadable_model(in_tmp, configs_dir, baseline):
    run = in_tmp / "u"
    args = [
        "unlearn",
        "--config",
        f"{configs_dir}/digits.yaml",
        f"--ckpt_path={baseline}",
        f"--run_dir={run}",
        "--adversary.budget=0.05",
        "--unlearn=Fisher",
        "--unlearn.alpha=1e-6",
        f"--unlearn.cache_dir={in_tmp / 'cache'}",
        *QUIET,
    ]
    assert main(args) == 0
    r = json.loads((run / "results.json").read_text())
    assert r["phase"] == "unlearn" and r["forget/count"] == round(0.05 * r["primary/count"])
    model = load_classifier(r["checkpoint"])
    assert model.checkpoint["forget_ids"] == r["forget/ids"]
    assert (run / "config.yaml").is_file()


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--ckpt_path=missing.ckpt"], "does not exist"),
        (["--ckpt_path=corrupt.ckpt"], "corrupt"),
        (["--adversary.budget=5000"], "exceeds the training set"),
        (["--adversary=ClassSelector", "--adversary.target_class=12"], "target_class 12"),
        (["--twins.metric=raw_l3"], "raw_l3"),
    ],
)
def test_heal_bad_input_is_one_sentence_and_writes_nothing(in_tmp, configs_dir, baseline, capsys, extra, words):
    (in_tmp / "corrupt.ckpt").write_bytes(b"\x00not a checkpoint")
    before = sorted(os.listdir(in_tmp))
    args = ["heal", "--config", f"{configs_dir}/digits.yaml", f"--ckpt_path={baseline}", *QUIET, *extra]
    code = main(args)
    err = capsys.readouterr().err
    assert code != 0 and words in err
    assert sorted(os.listdir(in_tmp)) == before


def test_checkpoint_of_another_model_is_refused(in_tmp, configs_dir, baseline, capsys):
    code = main(["unlearn", "--config", f"{configs_dir}/mnist5k.yaml", f"--ckpt_path={baseline}", *QUIET])
    assert code == 2 and "another model" in capsys.readouterr().err


def test_stream_rounds_mix_benign_and_adversarial_requests(in_tmp, configs_dir, baseline):
    run = in_tmp / "s"
    args = [
        "stream",
        "--config",
        f"{configs_dir}/digits.yaml",
        f"--ckpt_path={baseline}",
        f"--run_dir={run}",
        "--adversary=ClassSelector",
        "--adversary.target_class=5",
        "--adversary.budget=6",
        "--stream.benign_ratio=0.5",
        "--stream.round_size=4",
        "--stream.heal=true",
        "--twins.metric=RawL2",
        "--unlearn=Fisher",
        "--unlearn.alpha=1e-6",
        *QUIET,
    ]
    assert main(args) == 0
    r = json.loads((run / "results.json").read_text())
    assert (r["stream/n_adversarial"], r["stream/n_benign"]) == (6, 6)
    assert [x["n_requests"] for x in r["stream/rounds"]] == [4, 4, 4]
    assert r["stream/unlearned_count"] == 12 and len(r["stream/curve"]) == 4
    lines = [json.loads(x) for x in (run / "ledger.jsonl").read_text().splitlines()]
    assert sum(x["type"] == "request" for x in lines) == 12 and sum(x["type"] == "twin" for x in lines) == 12
    assert sum(x["type"] == "round" for x in lines) == 3
    # rerunning the stream into the same folder appends nothing: replay is idempotent
    assert main(args) == 0
    assert len((run / "ledger.jsonl").read_text().splitlines()) == len(lines)


def test_unlearn_with_sisa_trains_the_ensemble_and_unlearns_exactly(in_tmp, configs_dir, baseline):
    run = in_tmp / "sisa"
    args = [
        "unlearn",
        "--config",
        f"{configs_dir}/digits.yaml",
        f"--ckpt_path={baseline}",
        f"--run_dir={run}",
        "--adversary.budget=4",
        "--unlearn=SISA",
        "--unlearn.shards=2",
        "--unlearn.slices=2",
        *QUIET,
    ]
    assert main(args) == 0
    r = json.loads((run / "results.json").read_text())
    assert r["sisa/train_time_s"] > 0 and r["sisa/test/acc"] > 0.5 and r["unlearned/test/acc"] > 0.5
    assert set(r["sisa/unlearn_affected_shards"]) <= {0, 1} and r["forget/count"] == 4


def test_sisa_shards_as_separate_jobs_then_heal_the_affected_shards(in_tmp, configs_dir, baseline):
    cache = in_tmp / "cache"
    common = [
        "--config",
        f"{configs_dir}/digits.yaml",
        f"--ckpt_path={baseline}",
        "--unlearn=SISA",
        "--unlearn.shards=2",
        "--unlearn.slices=2",
        f"--unlearn.cache_dir={cache}",
        *QUIET,
    ]
    # one job per shard (as on a cluster), each writing its shard file into the shared cache
    for shard in (0, 1):
        assert main(["unlearn", *common, f"--unlearn.shard={shard}", f"--run_dir={in_tmp / f'job{shard}'}"]) == 0
        job = json.loads((in_tmp / f"job{shard}" / "results.json").read_text())
        assert job["sisa/shard"] == shard and os.path.isfile(job["sisa/shard_file"])
    files = sorted(p.name for p in cache.glob("sisa-*/shard*.pt"))
    assert files == ["shard0.pt", "shard1.pt"]
    stamps = {p: p.stat().st_mtime_ns for p in cache.glob("sisa-*/shard*.pt")}
    # heal aggregates the cached shards (trains none again) and heals the shards that held a forgotten id
    run = in_tmp / "heal"
    assert (
        main(
            [
                "heal",
                *common,
                f"--run_dir={run}",
                "--adversary=ClassSelector",
                "--adversary.target_class=2",
                "--adversary.budget=4",
                "--twins.metric=RawL2",
                "--heal.epochs=2",
            ]
        )
        == 0
    )
    assert {p: p.stat().st_mtime_ns for p in cache.glob("sisa-*/shard*.pt")} == stamps
    r = json.loads((run / "results.json").read_text())
    assert r["unlearn/method"] == "sisa" and r["twins/count"] == 4 and r["heal/epochs"] == 2
    assert set(r["sisa/unlearn_affected_shards"]) <= {0, 1}
    for key in ("unlearned/test/acc", "healed/test/acc_epoch_1", "healed/test/acc_epoch_2", "healed/test/acc"):
        assert 0.5 < r[key] <= 1.0, key
    assert r["healed/test/acc"] == r["healed/test/acc_epoch_2"]


def test_stream_refuses_an_ensemble_method(in_tmp, configs_dir, baseline, capsys):
    code = main(
        [
            "stream",
            "--config",
            f"{configs_dir}/digits.yaml",
            f"--ckpt_path={baseline}",
            "--unlearn=SISA",
            f"--run_dir={in_tmp / 's'}",
            *QUIET,
        ]
    )
    assert code == 2 and "cannot apply SISA round by round; use Naive, Fisher" in capsys.readouterr().err


def test_gold_standard_repeats_the_baselines_recipe_whatever_the_heal_lr(in_tmp, configs_dir, baseline):
    """The heal fine-tune's learning rate must not leak into the gold standard (it retrains with the baseline's)."""
    runs = {}
    for name, extra in (("default", []), ("slow", ["--heal.lr=1e-5"])):
        runs[name] = in_tmp / name
        args = _heal_args(configs_dir, baseline, runs[name], "--twins.metric=null", *extra)
        args[args.index(f"--unlearn.cache_dir={runs[name].parent / 'cache'}")] = f"--unlearn.cache_dir={in_tmp / name}c"
        assert main(args) == 0
    a, b = (json.loads((runs[n] / "results.json").read_text()) for n in ("default", "slow"))
    assert (a["gold/cached"], b["gold/cached"]) == (False, False)  # trained twice, from separate caches
    assert a["gold/test/acc"] == b["gold/test/acc"] and a["gold/remain/acc"] == b["gold/remain/acc"]
    assert b["heal/lr"] == 1e-5 and a["heal/lr"] != 1e-5
