"""Experiment tracking: the per-run folder, the W&B logger and the results record.

What a run prints on the terminal (warnings, tips, progress bars) is :mod:`healing_pl.console`.
"""

from __future__ import annotations

import json
import os
import re
import struct
import sys
import time
from typing import Any

from lightning.pytorch.loggers import WandbLogger

from healing_pl import records as rk
from healing_pl.console import quiet_console
from healing_pl.files import write_json


def wandb_mode() -> str:
    """``offline`` unless the user asked for ``online`` (or ``disabled``) through WANDB_MODE."""
    mode = os.environ.get("WANDB_MODE", "offline").lower()
    return mode if mode in ("online", "offline", "disabled") else "offline"


def make_run_dir(base: str, stem: str) -> str:
    """Claim a fresh folder ``base/stem-YYYYmmdd-HHMMSS`` (suffixed ``-2``, ``-3``... if taken) and return it.

    The claim is the folder's creation (``os.mkdir`` fails if it exists), so two runners started in the
    same second never share a folder.
    """
    path = os.path.join(base, f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    os.makedirs(base, exist_ok=True)
    candidate, n = path, 1
    while True:
        try:
            os.mkdir(candidate)
            return candidate
        except FileExistsError:
            n += 1
            candidate = f"{path}-{n}"


def build_logger(tracking, run_dir: str, job_type: str, config: dict | None = None):
    """A W&B logger writing under ``run_dir`` (None when tracking is off or W&B is disabled).

    ``tracking`` is the ``--wandb`` config (:class:`healing_pl.phases.config.Tracking`); ``config`` the run's
    whole CLI configuration as the parser dumps it (chosen classes as ``{class_path, init_args}``). The run's
    name is ``--wandb.name`` or the run folder's name with the seed (``heal-fisher-none-s1``); its tags name
    the seed and, where the command has them, the unlearning method, the adversary and the twin metric
    (:func:`run_tags`). The W&B config starts with the small ``run`` section (:func:`run_section`); the CLI
    configuration follows under ``cli`` (``phases/record.py``), and nothing else goes there flat.
    """
    mode = wandb_mode()
    if not tracking.enabled or mode == "disabled":
        return None
    config = config or {}
    seed = run_seed(config)
    folder = os.path.basename(os.path.normpath(run_dir))
    return RunLogger(
        save_dir=os.path.abspath(run_dir),  # W&B's service process may have another working directory
        project=tracking.project,
        entity=tracking.entity,
        group=tracking.group,
        job_type=tracking.job_type or job_type,
        tags=list(dict.fromkeys([*tracking.tags, *run_tags(config)])),
        name=tracking.name or run_name(folder, seed),
        offline=mode != "online",
        config={RUN_SECTION: run_section(job_type, seed, folder)},
    )


#: the W&B config's section about the run itself (beside ``cli``, the CLI configuration)
RUN_SECTION = "run"
#: the W&B tags' prefixes, by the CLI option whose chosen class a tag names
TAGGED = {"unlearn": "method", "adversary": "adversary", "twins.metric": "metric"}


def run_seed(config: dict) -> int | None:
    """The run's seed: ``seed_everything``, else ``data.seed`` (a grid sets both to its seed); None if unset."""
    for value in (config.get("seed_everything"), (config.get("data") or {}).get("seed")):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def run_name(folder: str, seed: int | None) -> str:
    """The default W&B run name: the run folder's name with ``-s<seed>`` (runs of several seeds share folder
    names: ``seed-0/heal-fisher-none``, ``seed-1/heal-fisher-none``)."""
    suffix = "" if seed is None else f"-s{seed}"
    return folder if not suffix or folder.endswith(suffix) else folder + suffix


def chosen_class(config: dict, dotted: str) -> str | None:
    """The class name chosen for the option ``dotted`` (``unlearn``, ``twins.metric``) in a parser dump."""
    value = config
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, dict):
        value = value.get("class_path") or value.get("class")
    return str(value).rsplit(".", 1)[-1] if isinstance(value, str) and value else None


def run_tags(config: dict) -> list[str]:
    """``method:<Unlearner>``, ``adversary:<Selector>``, ``metric:<Metric>`` (those the command chose; a heal
    of R alone: ``metric:none``; a stream that does not heal has no metric) and ``seed:<seed>``: what a
    researcher filters runs on in W&B's runs table."""
    tags = []
    for option, tag in TAGGED.items():
        name = chosen_class(config, option)
        if option == "twins.metric":
            if "twins" not in config or (config.get("stream") or {}).get("heal") is False:
                continue
            name = name or "none"
        if name:
            tags.append(f"{tag}:{name}")
    seed = run_seed(config)
    return tags + ([] if seed is None else [f"seed:{seed}"])


def run_section(subcommand: str, seed: int | None, folder: str) -> dict:
    """The W&B config's ``run`` section: the subcommand, the seed the name carries and the run folder's name."""
    return {"subcommand": subcommand, "seed": seed, "folder": folder}


class RunLogger(WandbLogger):
    """Lightning's WandbLogger, except that a spawned run (``ddp_spawn``) opens its W&B run in rank zero's
    process: Lightning's own logger opens it in the launching process and attaches the workers to it, which
    hangs in offline mode. It also leaves out the ``anonymous`` setting Lightning always passes (W&B warns
    that the setting has no effect), a spawned rank quiets its console like the launching process, and
    Lightning's hyperparameters (the model's and the datamodule's ``save_hyperparameters``, flat: ``lr``,
    ``seed``, ``val``...) stay out of the W&B config, which holds them once, nested under ``cli``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._wandb_init.pop("anonymous", None)

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        """Nothing: the run's whole configuration is in the W&B config's ``cli`` section already."""

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_experiment"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        quiet_console()


def write_results(run_dir: str, record: dict[str, Any], name: str = "results.json") -> str:
    """Write the run's machine-readable results record (atomically) and return its path."""
    return write_json(os.path.join(run_dir, name), record, default=_jsonable, indent=2, sort_keys=True)


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def log_summary(logger, values: dict[str, Any]) -> None:
    """Put ``values`` into the W&B run summary (no-op without a W&B logger)."""
    if logger is None or not hasattr(logger, "experiment"):
        return
    run = logger.experiment
    for key, value in values.items():
        run.summary[key] = value


def finish_wandb() -> None:
    """Close the current W&B run, if any, so the next run starts a fresh one."""

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def _log_records(data: bytes) -> list[bytes]:
    """The records of a W&B transaction log (32 KiB blocks; each record: crc32, length, type)."""
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer too small for a header: skip to the next block
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        if kind == 0:  # zero padding up to the block's end
            pos += (block - pos % block) % block
            continue
        pending += data[pos : pos + length]
        pos += length
        if kind in (1, 4):  # a full record, or the last piece of one
            records.append(pending)
            pending = b""
    return records


def _has_exit(records: list[bytes], pb) -> bool:
    for raw in reversed(records[-20:]):
        record = pb.Record()
        try:
            record.ParseFromString(raw)
        except Exception:  # a record cut short while the writer is still flushing
            continue
        if record.WhichOneof("record_type") == "exit":
            return True
    return False


def read_offline_run(run_folder: str, wait_s: float = 30.0) -> dict:
    """Read back an offline W&B run folder (``.../wandb/offline-run-*``) without a server.

    Offline runs keep everything in one ``run-<id>.wandb`` file, a log of protobuf records in 32 KiB blocks
    (each record: crc32, length, type); media (images, tables) lie under ``files/media``. Returns:

    - ``run``: the run's ``name``, ``tags``, ``group`` and ``job_type``;
    - ``config`` and ``summary``: dicts of the run's config and final summary;
    - ``history``: the logged rows, in order (a dict per ``run.log`` call);
    - ``metrics``: ``{name: step_metric}`` from ``define_metric`` (globs under their glob name);
    - ``artifacts``: ``[{type, name, digest, metadata, files: {path: digest}, aliases}]`` logged by the run;
    - ``media``: paths of the files under ``files/media``, relative to it.

    W&B's writer process may still be flushing the file after ``run.finish()`` returns (seen on a loaded
    machine): the file is read again until it holds the run's exit record, for up to ``wait_s`` seconds.
    """
    import glob

    from wandb.proto import wandb_internal_pb2 as pb

    deadline = time.monotonic() + wait_s
    while True:
        files = glob.glob(os.path.join(run_folder, "*.wandb"))
        records = _log_records(open(files[0], "rb").read()) if files else []
        if (files and _has_exit(records, pb)) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if not files:
        raise FileNotFoundError(f"no .wandb file in '{run_folder}'.")
    out: dict = {"run": {}, "config": {}, "summary": {}, "history": [], "metrics": {}, "artifacts": []}

    def value(text):
        try:
            return json.loads(text)
        except ValueError:
            return text

    def apply(target, items):
        for item in items:
            target[item.key or "/".join(item.nested_key)] = value(item.value_json)

    for raw in records:
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            apply(out["config"], record.run.config.update)
            r = record.run
            out["run"] = {"name": r.display_name, "tags": list(r.tags), "group": r.run_group, "job_type": r.job_type}
        elif kind == "config":
            apply(out["config"], record.config.update)
        elif kind == "summary":
            apply(out["summary"], record.summary.update)
        elif kind == "history":
            row: dict = {}
            apply(row, record.history.item)
            out["history"].append(row)
        elif kind == "metric":
            m = record.metric
            out["metrics"][m.name or m.glob_name] = m.step_metric
        elif kind == "artifact":
            a = record.artifact
            out["artifacts"].append(
                {
                    "type": a.type,
                    "name": a.name,
                    "digest": a.digest,
                    "metadata": value(a.metadata) if a.metadata else {},
                    "aliases": list(a.aliases),
                    "files": {e.path: e.digest for e in a.manifest.contents},
                }
            )
    for key, val in list(out["config"].items()):  # config values are stored as {"value": ...}
        if isinstance(val, dict) and set(val) == {"value"}:
            out["config"][key] = val["value"]
    media = os.path.join(run_folder, "files", "media")
    out["media"] = sorted(os.path.relpath(os.path.join(d, f), media) for d, _, names in os.walk(media) for f in names)
    return out


# --------------------------------------------------------------------------- W&B media, tables, artifacts
#: the step metric of the healed curve (epoch 0: the unlearned start)
HEAL_STEP = rk.HEAL_EPOCH_STEP.name
#: history keys of the healed curve, all plotted against :data:`HEAL_STEP`
HEAL_KEYS = tuple(k.name for k in rk.HEAL_CURVE_KEYS)
#: the step metric of a stream's rounds, and the rounds' history keys plotted against it
STREAM_STEP = rk.stream_history(rk.CURVE_ROUND).name
STREAM_KEYS = tuple(rk.stream_history(k).name for k in rk.POINT_KEYS if k != rk.CURVE_ROUND)
_DEFINED: set[tuple[str, str]] = set()


def wandb_run(logger):
    """The W&B run behind a Lightning ``logger`` in this process, or None (no W&B, or not global rank zero)."""
    if not isinstance(logger, WandbLogger):
        return None
    run = logger.experiment
    return run if hasattr(run, "log_artifact") and hasattr(run, "define_metric") else None


def define_axis(run, step: str, keys: tuple[str, ...]) -> None:
    """Plot ``keys`` against ``step`` in ``run`` (once per run): exact names, which win over Lightning's
    catch-all ``*`` -> ``trainer/global_step``; no summary of their own (the summary holds the record's final
    figures, written at the end)."""
    if (run.id, step) in _DEFINED:
        return
    run.define_metric(step, summary="none")
    for key in keys:
        run.define_metric(key, step_metric=step, summary="none")
    _DEFINED.add((run.id, step))


def log_heal_epoch(
    run, epoch: int, *, test: float, val: float | None = None, baseline: float | None = None, gold: float | None = None
) -> None:
    """One point of the healed curve against ``heal/epoch`` (0: the unlearned start): the healed model's test
    and validation accuracy after ``epoch`` heal epochs (``healed/test/acc``, ``healed/val/acc``, the names of
    the record and the summary), with the baseline's and the gold standard's test accuracy
    (``baseline/test/acc``, ``gold/test/acc``) as flat reference series on the same x-axis. This is the heal's
    only validation series: Lightning's own validation loop logs nothing to W&B during a heal."""
    if run is None:
        return
    define_axis(run, HEAL_STEP, HEAL_KEYS)
    values = {
        rk.HEALED_TEST_ACC: test,
        rk.HEALED_VAL_ACC_POINT: val,
        rk.BASELINE_TEST_ACC: baseline,
        rk.GOLD_TEST_ACC: gold,
    }
    run.log({HEAL_STEP: epoch, **{k.name: v for k, v in values.items() if v is not None}})


def stream_log(logger):
    """``log(metrics, round)`` for a stream (``phases/stream.py``): each round's ``stream/<metric>`` against
    ``stream/round`` in the W&B run behind ``logger``; None without one."""
    run = wandb_run(logger)
    if run is None:
        return None

    def log(metrics: dict, index: int) -> None:
        define_axis(run, STREAM_STEP, STREAM_KEYS)
        run.log({STREAM_STEP: index, **metrics})

    return log


def log_heal_chart(run, test: dict, val: dict, baseline: float | None, gold: float | None) -> None:
    """One chart of the whole healed curve (test and validation accuracy per heal epoch) with BL and GS drawn
    as flat lines on the same axes: a W&B line-series panel, which shows the references without any panel
    editing (the per-epoch history keys would each get a panel of their own)."""
    if run is None or not test:
        return
    import wandb

    epochs = sorted(test)
    ys, keys = [[test[e] for e in epochs]], ["test"]
    if val and all(e in val for e in epochs):
        ys.append([val[e] for e in epochs])
        keys.append("validation")
    for value, name in ((baseline, "baseline (BL)"), (gold, "gold standard (GS)")):
        if value is not None:
            ys.append([value] * len(epochs))
            keys.append(name)
    chart = wandb.plot.line_series(
        xs=epochs, ys=ys, keys=keys, title="Healed accuracy from the unlearned start", xname="heal epoch"
    )
    run.log({rk.HEAL_CURVE_CHART.name: chart})


def log_twins(run, pairs: list[dict], dataset, class_names=(), *, grid_pairs: int = 16) -> None:
    """The twins of a heal run: a Table ``twins`` (forget id, image and class; twin id, image and class; score)
    and an image grid ``twins/grid`` of the first ``grid_pairs`` forget samples, each beside its twin.

    ``dataset``: the pool's training set, indexed by pool id (``datamodule.pool.train``).
    """
    if run is None or not pairs:
        return
    import wandb

    from healing_pl.media import pair_grid, sample_image

    def name(label: int) -> str:
        return class_names[label] if label < len(class_names) else str(label)

    table = wandb.Table(
        columns=["forget_id", "forget_image", "forget_class", "twin_id", "twin_image", "twin_class", "score"]
    )
    shown = []
    for p in pairs:
        (forget, f_label), (twin, t_label) = (sample_image(dataset, p[k]) for k in ("request_id", "twin_id"))
        score = p.get("score")
        table.add_data(
            int(p["request_id"]),
            wandb.Image(forget),
            name(f_label),
            int(p["twin_id"]),
            wandb.Image(twin),
            name(t_label),
            None if score is None else float(score),
        )
        if len(shown) < grid_pairs:
            shown.append((forget, twin))
    caption = f"{len(shown)} forget samples (left of each pair) beside their twins (right)"
    run.log({rk.TWINS_TABLE.name: table, rk.TWINS_GRID.name: wandb.Image(pair_grid(shown), caption=caption)})


def log_id_table(run, key: str, ids, column: str) -> None:
    """A one-column Table of sample ids (e.g. ``forget/ids``)."""
    if run is None or ids is None:
        return
    import wandb

    run.log({key: wandb.Table(columns=[column], data=[[int(i)] for i in ids])})


def artifact_name(dataset: str, backbone: str, sha256: str) -> str:
    """The W&B artifact name of a baseline checkpoint: ``baseline-<dataset>-<backbone>-<sha256[:16]>``."""
    safe = re.sub(r"[^\w.-]", "_", f"baseline-{dataset}-{backbone}-{sha256[:16]}")
    return safe


def file_sha256(path: str) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def log_model_artifact(
    run, checkpoint: str, *, dataset: str, backbone: str, metadata: dict | None = None
) -> str | None:
    """Log a baseline checkpoint as a ``model`` artifact; return the artifact's name (None without a run)."""
    if run is None or not os.path.isfile(checkpoint):
        return None
    import wandb

    sha = file_sha256(checkpoint)
    name = artifact_name(dataset, backbone, sha)
    meta = {"sha256": sha, "dataset": dataset, "backbone": backbone, **(metadata or {})}
    artifact = wandb.Artifact(name, type="model", metadata=meta)
    artifact.add_file(checkpoint, name="model.ckpt", policy="immutable")
    run.log_artifact(artifact, aliases=["latest", f"sha256-{sha[:16]}"])
    return name


def log_results_artifact(run, run_dir: str, record: dict, extra_files: tuple[str, ...] = ()) -> None:
    """Log ``results.json`` and the ``extra_files`` that exist (e.g. the run's ledger) as a ``results`` artifact."""
    if run is None:
        return
    import wandb

    name = re.sub(r"[^\w.-]", "_", f"results-{run.id}")
    keys = (rk.PHASE, rk.DATASET, rk.BACKBONE, rk.BASELINE_SHA256)
    meta = {k.name: record.get(k) for k in keys if record.get(k) is not None}
    artifact = wandb.Artifact(name, type="results", metadata=meta)
    artifact.add_file(os.path.join(run_dir, "results.json"), name="results.json")
    for path in extra_files:
        if os.path.isfile(path):
            artifact.add_file(path, name=os.path.basename(path))
    run.log_artifact(artifact)


def declare_baseline(run, name: str) -> str:
    """Declare that this run uses the baseline's ``model`` artifact ``name``; return how it was declared.

    Online, ``run.use_artifact`` records the lineage edge (the fit run must have been synced). Offline,
    W&B refuses ``use_artifact`` of any kind ("Cannot use artifact when in offline mode"), so the run
    keeps the artifact's name in its config (``lineage/baseline_artifact``); after ``wandb sync`` of both
    runs, ``wandb.Api().run(...).use_artifact(...)`` adds the edge.
    """
    if run is None:
        return "none"
    run.config.update({rk.LINEAGE_BASELINE_ARTIFACT.name: f"{name}:latest"}, allow_val_change=True)
    if wandb_mode() != "online":
        return "config"
    try:
        run.use_artifact(f"{name}:latest", type="model")
        return "use_artifact"
    except Exception as err:  # not synced yet, or another project: the config still names it
        print(f"W&B: baseline artifact {name} not found online ({type(err).__name__}); lineage kept in the config.")
        return "config"


def log_grid_table(
    group_name: str, records: list[dict], project: str = "healing-pl", run_dir: str | None = None, entity=None
) -> str | None:
    """One small W&B run (job type ``summary``, group ``group_name``) holding the Table ``grid`` of a grid's
    healed curves: one row per method x setup x epoch with test and validation accuracy (epoch 0 is the
    unlearned start), from the grid's heal records. Returns the W&B run's folder (None when W&B is off).

    With ``run_dir`` (the grid's folder), ``<run_dir>/wandb/grid-summary.json`` remembers what was logged: a
    finished grid run again, with the same rows, logs nothing new and returns the folder of the run that holds
    them; rows that changed (more runs finished) make a new summary run."""
    mode = wandb_mode()
    if mode == "disabled":
        return None
    import hashlib

    import wandb

    rows = grid_rows(records)
    data = [[r[c] for c in GRID_COLUMNS] for r in rows]
    digest = hashlib.sha256(
        json.dumps([group_name, project, entity, list(GRID_COLUMNS), data], default=str).encode()
    ).hexdigest()
    marker = None if run_dir is None else os.path.join(os.path.abspath(run_dir), "wandb", GRID_MARKER)
    logged = _read_marker(marker)
    if logged.get("sha256") == digest and os.path.isdir(logged.get("folder", "")):
        return logged["folder"]
    finish_wandb()
    run = wandb.init(
        project=project,
        entity=entity,
        group=group_name,
        job_type="summary",
        name=f"{group_name}-summary",
        dir=None if run_dir is None else os.path.abspath(run_dir),  # the service may have another cwd
        mode=mode,
        config={"grid": group_name, "runs": len(records)},
        reinit="finish_previous",
    )
    try:
        table = wandb.Table(columns=list(GRID_COLUMNS), data=data)
        run.log({rk.GRID_TABLE.name: table})
        folder = run.dir.rsplit(os.sep + "files", 1)[0]
    finally:
        run.finish()
    if marker is not None:
        write_json(marker, {"sha256": digest, "folder": folder}, indent=1)
    return folder


#: the file under a grid's ``wandb/`` folder naming its summary run and the rows it holds
GRID_MARKER = "grid-summary.json"


def _read_marker(path: str | None) -> dict:
    try:
        with open(path) as f:
            value = json.load(f)
        return value if isinstance(value, dict) else {}
    except (TypeError, OSError, ValueError):
        return {}


GRID_COLUMNS = ("method", "setup", "seed", "epoch", "test_acc", "val_acc", "baseline_acc", "gold_acc")


def grid_rows(records: list[dict]) -> list[dict]:
    """Rows method x setup x epoch (test and validation accuracy) from heal records, in a stable order."""
    rows = []
    for r in records:
        if r.get(rk.PHASE) != rk.HEAL:
            continue
        for e, test in rk.per_epoch(r, "test").items():
            rows.append(
                {
                    "method": r.get(rk.UNLEARN_METHOD),
                    "setup": r.get(rk.HEAL_SETUP),
                    "seed": r.get(rk.UNLEARN_SEED),
                    "epoch": e,
                    "test_acc": test,
                    "val_acc": r.get(rk.healed_val_acc(e)),
                    "baseline_acc": r.get(rk.BASELINE_TEST_ACC),
                    "gold_acc": r.get(rk.GOLD_TEST_ACC),
                }
            )
    return sorted(rows, key=lambda x: (str(x["method"]), str(x["setup"]), str(x["seed"]), x["epoch"]))
