"""The experiment identity a run records: what defines the experiment, its seeds apart, a stable short id."""

import json

from healing_pl.phases.identity import experiment_id, experiment_identity, short_hash
from tests.report.conftest import CONFIG, HPARAMS, SHA, config


def test_identity_drops_what_does_not_define_the_experiment():
    identity = experiment_identity("heal", CONFIG, SHA, HPARAMS)
    c = identity["config"]
    assert "run_dir" not in c and "ckpt_path" not in c
    assert c["wandb"] == {"group": "g"}  # the grid name stays; name, tags, project do not
    assert "enable_progress_bar" not in c["trainer"] and "accelerator" not in c["trainer"]
    assert c["twins"] == {"k": 3}  # the compared axes (metric, policy) and the seed are out
    assert c["unlearn"] == {"class": "Fisher", "repeats": 1, "alpha": 1e-6}  # the chosen class and its knobs; no cache
    assert identity["baseline"] == {"sha256": SHA, "hparams": HPARAMS}
    assert identity["seeds"] == {
        "seed_everything": 0,
        "data.seed": 0,
        "unlearn.seed": 0,
        "adversary.seed": 0,
        "twins.seed": 0,
    }
    assert CONFIG["run_dir"] == "runs/g/heal-0"  # the caller's config is untouched


def test_id_ignores_compared_axes_seeds_and_the_baseline_sha_but_not_the_rest():
    identity = experiment_identity("heal", CONFIG, SHA, HPARAMS)
    base = experiment_id(identity)
    assert base == short_hash({"subcommand": "heal", "config": identity["config"], "hparams": HPARAMS})
    same = [
        experiment_identity("heal", config(twins__metric=None, twins__policy="twins"), SHA, HPARAMS),
        experiment_identity("heal", config(seed_everything=3, data__seed=2, unlearn__seed=5), SHA, HPARAMS),
        experiment_identity("heal", config(run_dir="elsewhere", wandb__name="x", wandb__tags=["a"]), "b" * 64, HPARAMS),
    ]
    assert {experiment_id(i) for i in same} == {base}
    other = [
        experiment_identity("heal", config(heal__epochs=3), SHA, HPARAMS),
        experiment_identity("heal", config(unlearn__alpha=8e-6), SHA, HPARAMS),
        experiment_identity("heal", config(wandb__group="other-grid"), SHA, HPARAMS),
        experiment_identity("heal", CONFIG, SHA, HPARAMS | {"lr": 0.001}),
        experiment_identity("unlearn", CONFIG, SHA, HPARAMS),
    ]
    assert len({experiment_id(i) for i in other} | {base}) == 6
    # key order does not matter, and the hash is sha256 of the sorted compact JSON
    assert short_hash({"b": 1, "a": [1, 2]}) == short_hash({"a": [1, 2], "b": 1})
    import hashlib

    assert short_hash({"a": 1}) == hashlib.sha256(json.dumps({"a": 1}, separators=(",", ":")).encode()).hexdigest()[:12]
