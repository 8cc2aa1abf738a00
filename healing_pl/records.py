"""Every key of a run's record (``results.json``), defined once and typed.

A run's record is one flat JSON object of slash-separated keys (``baseline/test/acc``, ``twins/metric``,
``healed/test/acc_epoch_3``, ...). The phase results write it (their ``record()`` methods, merged by
:mod:`healing_pl.phases.record`), and the report, the dashboard, the W&B report, the W&B logging and the CLI
read it back. Both sides name a key only through this module, so a key renamed here is renamed everywhere,
and a key renamed on one side only fails a test (``tests/test_records.py``) instead of a report cell going
blank.

==================  =========================================================================================
what                how
==================  =========================================================================================
one key             a :class:`Key` constant: ``BASELINE_TEST_ACC = Key("baseline/test/acc", float, ...)``; a Key
                    *is* its name (a ``str``), so ``record[BASELINE_TEST_ACC]`` and ``{KEY: value}`` just work
a family of keys    a :class:`Family` (a template with typed placeholders) and a function that names one
                    member: :func:`accuracy` (``<model>/<split>/acc``), :func:`healed_acc`
                    (``healed/<split>/acc_epoch_<k>``), :func:`mia` (``<model>/mia/<figure>``),
                    :func:`unlearn_knob` (``unlearn/<knob>``), :func:`method_info` (``<method>/<info>``)
reading             :func:`get` (the value, typed by its key, or a default), :func:`number`,
                    :func:`per_epoch` (a healed curve), :func:`is_per_epoch`, :func:`lookup` (the declaration of
                    any key), :func:`undeclared` (what of a record the schema does not declare)
==================  =========================================================================================

Besides the record's own keys (``where == "record"``), the module names the keys *inside* a stream's
curve points (``where == "point"``: ``round``, ``test/acc``, ...) and the W&B names the runs log outside the
record (``where`` is ``history``, ``summary`` or ``config``), so that the W&B report plots what the runs log.

Every key says which phase results write it (``writers``: class or function names) and which subcommands'
records hold it (``phases``: fit, unlearn, heal, stream). This module imports nothing of the package: every
layer may use it.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Iterable, Mapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")
D = TypeVar("D")

#: the subcommands, each writing one record shape
FIT, UNLEARN, HEAL, STREAM = "fit", "unlearn", "heal", "stream"
PHASES = (FIT, UNLEARN, HEAL, STREAM)
#: subcommands that start from a baseline checkpoint
FROM_BASELINE = (UNLEARN, HEAL, STREAM)

#: where a key lives: the record (results.json and, for its final scalars, the W&B summary), a point of a
#: stream's curve, or only in the W&B run (history, summary, config)
RECORD, POINT, HISTORY, SUMMARY, CONFIG = "record", "point", "history", "summary", "config"

#: any value a record may hold (what ``json`` writes)
JSON = (str, int, float, bool, list, dict, type(None))
NUMBER = (int, float)

#: the evaluated models (``<model>/<split>/acc``, ``<model>/mia/<figure>``)
BASELINE, GOLD, UNLEARNED, HEALED = "baseline", "gold", "unlearned", "healed"
MODELS = (BASELINE, GOLD, UNLEARNED, HEALED)
#: the sets a model is evaluated on
TEST, REMAIN, FORGET = "test", "remain", "forget"
SPLITS = (TEST, REMAIN, FORGET)
#: the splits of the healed curve (``healed/<split>/acc_epoch_<k>``)
CURVE_SPLITS = ("test", "val")
#: the MIA kinds: forget set vs held-out samples (every model), twins vs forget set (healed models)
MIA, MIA_TWINS = "mia", "mia_twins"
#: the population MIA: the remain set vs the whole held-out split (the signal the attack can reach)
MIA_POPULATION = "mia_population"


# --------------------------------------------------------------------------- the declarations
class Key(str, Generic[T]):
    """One record key: its name (the Key itself is that string), the type of its value, what it means, the
    phase results that write it and the subcommands whose records hold it.

    ``optional``: the value may be null (None). ``type``: a type or a tuple of types (an ``int`` counts as a
    ``float``; a ``bool`` only where ``bool`` is declared).
    """

    type: builtins.type | tuple[builtins.type, ...]
    description: str
    writers: tuple[str, ...]
    phases: tuple[str, ...]
    optional: bool
    where: str

    def __new__(
        cls,
        name: str,
        type: builtins.type | tuple[builtins.type, ...],
        description: str,
        *,
        writers: Iterable[str] = (),
        phases: Iterable[str] = (),
        optional: bool = False,
        where: str = RECORD,
    ):
        self = super().__new__(cls, name)
        self.type, self.description = type, description
        self.writers, self.phases = tuple(writers), tuple(phases)
        self.optional, self.where = optional, where
        return self

    @property
    def name(self) -> str:
        return str.__str__(self)

    def accepts(self, value) -> bool:
        """Whether ``value`` has the declared type (None only when the key is optional)."""
        if value is None:
            return self.optional or type(None) in _types(self.type)
        types = _types(self.type)
        if isinstance(value, bool):
            return bool in types
        if isinstance(value, int) and float in types:
            return True
        return isinstance(value, types)

    def __repr__(self) -> str:
        return f"Key({self.name!r})"

    def __reduce__(self):
        return (
            _rebuild,
            (self.name, self.type, self.description, self.writers, self.phases, self.optional, self.where),
        )


def _rebuild(name, type, description, writers, phases, optional, where) -> Key:
    return Key(name, type, description, writers=writers, phases=phases, optional=optional, where=where)


def _types(declared) -> tuple[type, ...]:
    return declared if isinstance(declared, tuple) else (declared,)


class Family:
    """A family of keys: a template (``healed/{split}/acc_epoch_{epoch}``) whose placeholders match the
    regular expressions in ``fields``; every member has the family's type, writers and phases."""

    def __init__(
        self,
        template: str,
        type: builtins.type | tuple[builtins.type, ...],
        description: str,
        *,
        fields: Mapping[str, str],
        writers: Iterable[str],
        phases: Iterable[str],
        optional: bool = False,
        where: str = RECORD,
    ):
        self.template, self.type, self.description = template, type, description
        self.fields, self.writers, self.phases = dict(fields), tuple(writers), tuple(phases)
        self.optional, self.where = optional, where
        pattern, pos = "", 0
        for m in re.finditer(r"\{(\w+)\}", template):
            pattern += re.escape(template[pos : m.start()]) + f"(?P<{m.group(1)}>{self.fields[m.group(1)]})"
            pos = m.end()
        self.pattern = re.compile(pattern + re.escape(template[pos:]))

    def key(self, **parts) -> Key:
        """The member named by ``parts`` (the declared constant when there is one: its phases are exact)."""
        name = self.template.format(**parts)
        if not self.match(name):
            raise ValueError(f"'{name}' is not a key of the family {self.template}.")
        known = _DECLARED.get(name)
        if known is not None:
            return known
        return Key(
            name,
            self.type,
            self.description,
            writers=self.writers,
            phases=self.phases,
            optional=self.optional,
            where=self.where,
        )

    def declare(
        self, *, type=None, description: str | None = None, writers=None, phases=None, optional=None, **parts
    ) -> Key:
        """Declare a member as a constant of its own (a narrower type, its own description, writers, phases)."""
        member = self.key(**parts)
        return _declare(
            Key(
                member.name,
                self.type if type is None else type,
                description or self.description,
                writers=self.writers if writers is None else writers,
                phases=self.phases if phases is None else phases,
                optional=self.optional if optional is None else optional,
                where=self.where,
            )
        )

    def match(self, name: str) -> dict[str, str] | None:
        """The placeholders of ``name`` when it is a member, else None."""
        m = self.pattern.fullmatch(name)
        return m.groupdict() if m else None

    def __repr__(self) -> str:
        return f"Family({self.template!r})"


_DECLARED: dict[str, Key] = {}


def _declare(key: Key) -> Key:
    if key.name in _DECLARED:
        raise ValueError(f"record key '{key.name}' is declared twice.")
    _DECLARED[key.name] = key
    return key


def _section(writers: tuple[str, ...], phases: tuple[str, ...]):
    """A declarer of the record keys that ``writers`` write into the records of ``phases``."""

    def declare(name: str, type, description: str, *, optional: bool = False, writers=writers, phases=phases) -> Key:
        return _declare(Key(name, type, description, writers=writers, phases=phases, optional=optional))

    return declare


# --------------------------------------------------------------------------- the header (RunWriter)
_run = _section(("RunWriter",), PHASES)
PHASE = _run("phase", str, "the subcommand that wrote the record: fit, unlearn, heal or stream")
DATASET = _run("dataset", str, "the dataset (data.dataset)")
BACKBONE = _run("backbone", str, "the model's backbone")
RUN_DIR = _run("run_dir", str, "the run folder")
WORLD_SIZE = _run("world_size", int, "processes (devices) the run used")
DEVICE = _run("device", str, "rank zero's device")
PRECISION = _run("precision", str, "the trainer's precision")
THREADS = _run(
    "threads",
    int,
    "CPU threads of rank zero's torch (on the CPU the same seed gives the same numbers at the same count)",
)
#: added by the report's loader to every record it reads (never written to results.json): the file it came from
FILE = Key("_file", str, "the results.json a record was read from", writers=("load_records",))

# --------------------------------------------------------------------------- the experiment identity
_identity = _section(("identity_record",), PHASES)
EXPERIMENT = _identity("experiment", dict, "the experiment identity: subcommand, config, baseline, seeds")
EXPERIMENT_ID = _identity("experiment/id", str, "short hash of the identity without seeds and baseline sha256")
EXPERIMENT_SEEDS = _identity("experiment/seeds", dict, "the run's seeds by dotted option")

# --------------------------------------------------------------------------- fit
_trained = _section(("Trained",), (FIT,))
FIT_TEST_ACC = _trained("test/acc", float, "the trained baseline's accuracy on the full test set")
FIT_TEST_LOSS = _trained("test/loss", float, "the trained baseline's test loss")
FIT_TEST_ACC_CLASS = _trained("test/acc_class", list, "the trained baseline's test accuracy per class")
TRAIN_EPOCHS = _trained("train/epochs", int, "epochs the baseline trained")
TRAIN_TIME_S = _trained("train/time_s", float, "wall time of the fit [s]")
CHECKPOINT = _trained(
    "checkpoint",
    str,
    "the checkpoint the run wrote (fit: the baseline; unlearn: the unlearned model)",
    writers=("Trained", "_Checkpoint"),
    phases=(FIT, UNLEARN),
)
CHECKPOINT_ARTIFACT = _trained(
    "checkpoint/artifact", str, "the W&B model artifact of the baseline checkpoint", writers=("_ModelArtifact",)
)

# --------------------------------------------------------------------------- baseline
_baseline = _section(("Baseline",), FROM_BASELINE)
BASELINE_CHECKPOINT = _baseline("baseline/checkpoint", str, "the baseline checkpoint's path")
BASELINE_SHA256 = _baseline("baseline/sha256", str, "sha256 of the baseline checkpoint's bytes")
BASELINE_EPOCHS = _baseline("baseline/epochs", int, "the baseline's training epochs N")

# --------------------------------------------------------------------------- adversary and requests
_source = _section(("Selector", "RequestsFile"), FROM_BASELINE)
ADVERSARY_SELECTOR = _source(
    "adversary/selector",
    str,
    "the adversary's record name (requests: a requests file)",
    writers=("Selector", "RequestsFile", "StreamResult"),
)
ADVERSARY_BUDGET = _source(
    "adversary/budget", NUMBER, "requests the adversary may send: a count or a share", optional=True
)
ADVERSARY_SYSTEM_KNOWLEDGE = _source("adversary/system_knowledge", str, "what it knows of the system", optional=True)
ADVERSARY_DATA_KNOWLEDGE = _source("adversary/data_knowledge", str, "what it knows of the training set", optional=True)
ADVERSARY_TARGET_CLASS = _source("adversary/target_class", int, "the class a class adversary targets", optional=True)
#: the value of ``adversary/selector`` when a requests file replaced the adversary
REQUESTS_SELECTOR = "requests"
REQUESTS_FILE = _source(
    "requests/file", str, "the requests file that replaced the adversary", writers=("RequestsFile",)
)
REQUESTS_FILE_SHA256 = _source("requests/file_sha256", str, "sha256 of the requests file", writers=("RequestsFile",))

# --------------------------------------------------------------------------- forget set
_UH = (UNLEARN, HEAL)
_forget = _section(("ForgetSet",), _UH)
FORGET_COUNT = _forget(
    "forget/count",
    int,
    "samples unlearned (the accepted forget set F)",
    writers=("ForgetSet", "StreamResult"),
    phases=FROM_BASELINE,
)
FORGET_IDS = _forget("forget/ids", list, "pool ids of the forget set, in request order")
FORGET_CLASSES = _forget("forget/classes", list, "samples of the forget set per class")
PRIMARY_COUNT = _forget("primary/count", int, "samples of the primary (training) set")
REQUESTS_COUNT = _forget("requests/count", int, "requests received")
REQUESTS_ACCEPTED = _forget("requests/accepted", int, "requests accepted")
REQUESTS_REJECTED = _forget("requests/rejected", int, "requests rejected")
REQUESTS_REASONS = _forget("requests/reasons", dict, "decisions per reason")

# --------------------------------------------------------------------------- evaluated models
EVALUATION = Family(
    "{model}/{split}/acc",
    float,
    "a model's accuracy on the test set, the remain set R or the forget set F",
    fields={"model": "|".join(MODELS), "split": "|".join(SPLITS)},
    writers=("Evaluation",),
    phases=_UH,
)
BASELINE_TEST_ACC = EVALUATION.declare(
    model=BASELINE,
    split=TEST,
    writers=("Evaluation", "StreamResult"),
    phases=FROM_BASELINE,
    description="the baseline's test accuracy (a stream's: its curve at round -1)",
)
BASELINE_REMAIN_ACC = EVALUATION.declare(model=BASELINE, split=REMAIN)
BASELINE_FORGET_ACC = EVALUATION.declare(model=BASELINE, split=FORGET)
GOLD_TEST_ACC = EVALUATION.declare(model=GOLD, split=TEST)
GOLD_REMAIN_ACC = EVALUATION.declare(model=GOLD, split=REMAIN)
GOLD_FORGET_ACC = EVALUATION.declare(model=GOLD, split=FORGET)
UNLEARNED_TEST_ACC = EVALUATION.declare(model=UNLEARNED, split=TEST)
UNLEARNED_REMAIN_ACC = EVALUATION.declare(model=UNLEARNED, split=REMAIN)
UNLEARNED_FORGET_ACC = EVALUATION.declare(model=UNLEARNED, split=FORGET)
HEALED_TEST_ACC = EVALUATION.declare(model=HEALED, split=TEST, phases=(HEAL,))
HEALED_REMAIN_ACC = EVALUATION.declare(model=HEALED, split=REMAIN, phases=(HEAL,))
HEALED_FORGET_ACC = EVALUATION.declare(model=HEALED, split=FORGET, phases=(HEAL,))


def accuracy(model: str, split: str) -> Key[float]:
    """``<model>/<split>/acc``: ``model`` one of :data:`MODELS`, ``split`` one of :data:`SPLITS`."""
    return EVALUATION.key(model=model, split=split)


# --------------------------------------------------------------------------- gold standard
_gold = _section(("Gold",), _UH)
GOLD_TIME_S = _gold("gold/time_s", float, "wall time of the gold standard's training (also when cached) [s]")
GOLD_CACHED = _gold("gold/cached", bool, "the gold standard came from the cache")

# --------------------------------------------------------------------------- distance to the gold standard
GOLD_DISTANCE = Family(
    "{model}/forget/{figure}_gs",
    float,
    "how far a model is from the gold standard on the forget set: gap = its forget accuracy minus the gold "
    "standard's; kl = the mean KL(gold || model) of the output distributions over the forget samples [nats]",
    fields={"model": f"{BASELINE}|{UNLEARNED}|{HEALED}", "figure": "gap|kl"},
    writers=("GoldDistance",),
    phases=_UH,
    optional=True,
)
BASELINE_GAP_GS = GOLD_DISTANCE.declare(model=BASELINE, figure="gap")
BASELINE_KL_GS = GOLD_DISTANCE.declare(model=BASELINE, figure="kl")
UNLEARNED_GAP_GS = GOLD_DISTANCE.declare(model=UNLEARNED, figure="gap")
UNLEARNED_KL_GS = GOLD_DISTANCE.declare(model=UNLEARNED, figure="kl")
HEALED_GAP_GS = GOLD_DISTANCE.declare(model=HEALED, figure="gap", phases=(HEAL,))
HEALED_KL_GS = GOLD_DISTANCE.declare(model=HEALED, figure="kl", phases=(HEAL,))


def gold_distance(model: str, figure: str) -> Key[float]:
    """``<model>/forget/<figure>_gs``: ``figure`` gap or kl (see :data:`GOLD_DISTANCE`)."""
    return GOLD_DISTANCE.key(model=model, figure=figure)


# --------------------------------------------------------------------------- unlearning
_UNLEARNED = ("Unlearned",)
UNLEARN_KNOB = Family(
    "unlearn/{knob}",
    JSON,
    "a hyperparameter of the unlearning method (its knobs without cache, MIA and collapse handling)",
    fields={"knob": r"[a-z][a-z0-9_]*"},
    writers=_UNLEARNED,
    phases=_UH,
    optional=True,
)
UNLEARN_METHOD = UNLEARN_KNOB.declare(knob="method", type=str, optional=False, description="the method's record name")
UNLEARN_SEED = UNLEARN_KNOB.declare(knob="seed", type=int, optional=False, description="the (first repeat's) seed")
UNLEARN_SHARDS = UNLEARN_KNOB.declare(knob="shards", type=int, optional=False, description="SISA: shards S")
UNLEARN_SLICES = UNLEARN_KNOB.declare(knob="slices", type=int, optional=False, description="SISA: slices R per shard")


def unlearn_knob(knob: str) -> Key:
    """``unlearn/<knob>``: a hyperparameter of the unlearning method."""
    return UNLEARN_KNOB.key(knob=knob)


def knob_of(name: str) -> str | None:
    """The knob an ``unlearn/<knob>`` key names (None for any other key)."""
    parts = UNLEARN_KNOB.match(name)
    return parts["knob"] if parts else None


_unlearned = _section(_UNLEARNED, _UH)
UNLEARNED_ACC_MEAN = _unlearned("unlearned/acc_mean", float, "test accuracy, mean over repeats")
UNLEARNED_ACC_STD = _unlearned("unlearned/acc_std", float, "test accuracy, standard deviation over repeats")
UNLEARNED_TIME_S = _unlearned("unlearned/time_s", float, "wall time of a repeat, mean over repeats [s]")
UNLEARNED_REPRESENTATIVE = _unlearned(
    "unlearned/representative", int, "the kept repeat: validation accuracy closest to the mean"
)
UNLEARNED_ACC_REPEATS = _unlearned("unlearned/acc_repeats", list, "test accuracy of every repeat")
UNLEARNED_VAL_ACC_REPEATS = _unlearned(
    "unlearned/val/acc_repeats", list, "validation accuracy of every repeat", optional=True
)
UNLEARNED_VAL_ACC_MEAN = _unlearned("unlearned/val/acc_mean", float, "validation accuracy, mean", optional=True)
UNLEARNED_VAL_ACC_STD = _unlearned("unlearned/val/acc_std", float, "validation accuracy, std", optional=True)
UNLEARNED_CACHED = _unlearned("unlearned/cached", bool, "the unlearned model came from the cache")

METHOD_INFO = Family(
    "{method}/{info}",
    JSON,
    "what the unlearning method reports about its run (e.g. SISA's retrained shards)",
    fields={"method": r"[a-z][a-z0-9_]*", "info": r"[a-z0-9_]+(?:/[a-z0-9_]+)*"},
    writers=_UNLEARNED,
    phases=_UH,
    optional=True,
)
#: the SISA method's record name (its info keys below)
SISA = "sisa"
SISA_TEST_ACC = METHOD_INFO.declare(
    method=SISA, info="test/acc", type=float, optional=False, description="SISA: the ensemble's test accuracy"
)
SISA_TRAIN_TIME_S = METHOD_INFO.declare(
    method=SISA, info="train_time_s", type=float, optional=False, description="SISA: the ensemble's training time [s]"
)
SISA_EPOCHS_PER_SLICE = METHOD_INFO.declare(
    method=SISA, info="epochs_per_slice", type=int, optional=False, description="SISA: epochs per slice stage"
)


def method_info(method: str, info: str) -> Key:
    """``<method>/<info>``: what the method ``method`` (its record name) reports."""
    return METHOD_INFO.key(method=method, info=info)


# --------------------------------------------------------------------------- attack strength
_attack = _section(("AttackStrength",), (UNLEARN,))
ATTACK_RANDOM_TEST_ACC = _attack(
    "attack/random_forget/test/acc", float, "test accuracy after unlearning a random set of the same size"
)
ATTACK_DROP = _attack("attack/drop", float, "accuracy drop of the adversary's set (baseline - unlearned)")
ATTACK_DROP_RANDOM = _attack("attack/drop_random", float, "accuracy drop of the random set")
ATTACK_STRENGTH = _attack("attack/strength", float, "the adversary's extra drop over the random set")

# --------------------------------------------------------------------------- membership inference
_MIA = ("MiaResult",)
MIA_FIGURE = Family(
    "{model}/{kind}/{figure}",
    float,
    "a loss-based MIA's ROC AUC or accuracy, mean over the folds, or the AUC's 95% interval (auc_low, auc_high) "
    "(mia: F vs class-matched held-out; mia_twins: twins vs F; mia_population: remain set vs the held-out split)",
    fields={
        "model": "|".join(MODELS),
        "kind": f"{MIA}|{MIA_TWINS}|{MIA_POPULATION}",
        "figure": "auc|acc|auc_low|auc_high",
    },
    writers=_MIA,
    phases=_UH,
)
BASELINE_MIA_AUC = MIA_FIGURE.declare(model=BASELINE, kind=MIA, figure="auc")
BASELINE_MIA_ACC = MIA_FIGURE.declare(model=BASELINE, kind=MIA, figure="acc")
GOLD_MIA_AUC = MIA_FIGURE.declare(model=GOLD, kind=MIA, figure="auc")
GOLD_MIA_ACC = MIA_FIGURE.declare(model=GOLD, kind=MIA, figure="acc")
UNLEARNED_MIA_AUC = MIA_FIGURE.declare(model=UNLEARNED, kind=MIA, figure="auc")
UNLEARNED_MIA_ACC = MIA_FIGURE.declare(model=UNLEARNED, kind=MIA, figure="acc")
HEALED_MIA_AUC = MIA_FIGURE.declare(model=HEALED, kind=MIA, figure="auc", phases=(HEAL,))
HEALED_MIA_ACC = MIA_FIGURE.declare(model=HEALED, kind=MIA, figure="acc", phases=(HEAL,))
HEALED_MIA_TWINS_AUC = MIA_FIGURE.declare(model=HEALED, kind=MIA_TWINS, figure="auc", phases=(HEAL,))
HEALED_MIA_TWINS_ACC = MIA_FIGURE.declare(model=HEALED, kind=MIA_TWINS, figure="acc", phases=(HEAL,))
MIA_TWINS_N = Family(
    "{model}/mia_twins/n",
    int,
    "samples per side of the twins-vs-forget-set MIA",
    fields={"model": "|".join(MODELS)},
    writers=_MIA,
    phases=(HEAL,),
)
HEALED_MIA_TWINS_N = MIA_TWINS_N.declare(model=HEALED)
_mia = _section(_MIA, _UH)
MIA_HELDOUT = _mia("mia/heldout", str, "the split of the MIA's held-out samples: test or val", optional=True)
MIA_N = _mia("mia/n", int, "samples per side of the forget-set MIA")
MIA_MATCHED = _mia(
    "mia/class_matched", bool, "the MIA's held-out samples match the forget set's classes", optional=True
)
MIA_POPULATION_N = _mia("mia_population/n", int, "samples per side of the population MIA", optional=True)


MIA_EFFICACY = Family(
    "{model}/mia_efficacy",
    float,
    "SalUn's MIA-efficacy: the share of the forget set a confidence SVM (remain vs held-out) calls non-members",
    fields={"model": "|".join(MODELS)},
    writers=_MIA,
    phases=_UH,
    optional=True,
)


def mia_efficacy(model: str) -> Key[float]:
    """``<model>/mia_efficacy``."""
    return MIA_EFFICACY.key(model=model)


def mia(model: str, figure: str, kind: str = MIA) -> Key[float]:
    """``<model>/<kind>/<figure>``: ``figure`` auc or acc, ``kind`` :data:`MIA` or :data:`MIA_TWINS`."""
    return MIA_FIGURE.key(model=model, kind=kind, figure=figure)


def mia_twins_n(model: str) -> Key[int]:
    """``<model>/mia_twins/n``."""
    return MIA_TWINS_N.key(model=model)


# --------------------------------------------------------------------------- twins
_twins = _section(("TwinSet",), (HEAL,))
TWINS_METRIC = _twins("twins/metric", str, "the twin metric's record name (none: R alone)")
TWINS_POLICY = _twins("twins/policy", str, "the spare policy")
HEAL_SETUP = _twins("heal/setup", str, "the heal setup's label: R or T-<metric>")
TWINS_PAIRS = _twins("twins/pairs", list, "the twins: [{request_id, twin_id, score}]")
TWINS_COUNT = _twins("twins/count", int, "twins found")
TWINS_TIME_S = _twins("twins/time_s", float, "wall time of the twin search [s]")
TWINS_SAME_CLASS = _twins("twins/same_class", float, "share of twins of their request's class", optional=True)
HEAL_TRAIN_SIZE = _twins("heal/train_size", int, "size of the heal set: R (or its heal.remain_fraction) plus T")

# --------------------------------------------------------------------------- healing
_curve = _section(("HealCurve",), (HEAL,))
HEAL_EPOCHS = _curve("heal/epochs", int, "fine-tuning epochs (N/2 by default)")
HEAL_LR = _curve("heal/lr", float, "the fine-tune's learning rate")
HEAL_TIME_S = _curve("heal/time_s", float, "wall time of the fine-tune [s]", optional=True)
_heal_set = _section(("HealSet",), (HEAL,))
HEAL_REMAIN_FRACTION = _heal_set(
    "heal/remain_fraction", float, "the share of the remain set R in the heal set (1: R plus the twins)", optional=True
)
HEALED_EPOCH = Family(
    "healed/{split}/acc_epoch_{epoch}",
    float,
    "the healed model's test or validation accuracy after k fine-tuning epochs (k = 0: the unlearned start)",
    fields={"split": "|".join(CURVE_SPLITS), "epoch": r"\d+"},
    writers=("HealCurve",),
    phases=(HEAL,),
)
#: any per-epoch key (``healed/test/acc_epoch_3``): W&B holds those as history (the healed curve), not in its summary
PER_EPOCH = re.compile(r".*_epoch_\d+$")


def healed_acc(split: str, epoch: int) -> Key[float]:
    """``healed/<split>/acc_epoch_<epoch>``: ``split`` test or val; epoch 0 is the unlearned start."""
    return HEALED_EPOCH.key(split=split, epoch=int(epoch))


def healed_test_acc(epoch: int) -> Key[float]:
    return healed_acc("test", epoch)


def healed_val_acc(epoch: int) -> Key[float]:
    return healed_acc("val", epoch)


def is_per_epoch(name: str) -> bool:
    """Whether ``name`` is a per-epoch key (a point of a curve, not a final figure)."""
    return PER_EPOCH.match(name) is not None


# --------------------------------------------------------------------------- streams
_stream = _section(("StreamResult",), (STREAM,))
STREAM_ROUNDS = _stream("stream/rounds", list, "every round: its requests, decisions and metrics")
STREAM_CURVE = _stream("stream/curve", list, "a point {round, test/acc, ...} per round (round -1: the baseline)")
STREAM_N_ADVERSARIAL = _stream("stream/n_adversarial", int, "adversarial requests in the stream")
STREAM_N_BENIGN = _stream("stream/n_benign", int, "benign requests in the stream")
STREAM_N_USER = _stream("stream/n_user", int, "user requests (from a requests file)")
STREAM_FINAL_TEST_ACC = _stream("stream/final/test/acc", float, "test accuracy after the last round")
STREAM_UNLEARNED_COUNT = _stream("stream/unlearned_count", int, "samples unlearned over the stream")
STREAM_LEDGER = _stream("stream/ledger", str, "the stream's ledger file")


def _point(name: str, type, description: str) -> Key:
    return Key(name, type, description, writers=("run_stream",), phases=(STREAM,), where=POINT)


#: the keys of a point of ``stream/curve`` (and, but ``round``, of a round's metrics in ``stream/rounds``)
CURVE_ROUND = _point("round", int, "the round's index (-1: the baseline)")
CURVE_TEST_ACC = _point("test/acc", float, "test accuracy after the round")
CURVE_ACCEPTED = _point("round/accepted", int, "requests the round accepted")
CURVE_UNLEARNED_TEST_ACC = _point("unlearned/test/acc", float, "test accuracy after the round's unlearning")
CURVE_HEALED_TEST_ACC = _point("healed/test/acc", float, "test accuracy after the round's healing")
POINT_KEYS = (CURVE_ROUND, CURVE_TEST_ACC, CURVE_ACCEPTED, CURVE_UNLEARNED_TEST_ACC, CURVE_HEALED_TEST_ACC)

# --------------------------------------------------------------------------- SISA shard jobs
_shard = _section(("_ShardJob",), (UNLEARN,))
SISA_SHARD = _shard("sisa/shard", int, "the shard this job trained")
SISA_SHARDS = _shard("sisa/shards", int, "shards of the ensemble")
SISA_SHARD_FILE = _shard("sisa/shard_file", str, "the shard file the job wrote")
SISA_SHARD_TIME_S = _shard("sisa/shard_time_s", float, "wall time of the shard's training [s]")


# --------------------------------------------------------------------------- W&B names outside the record
def _wandb(name: str, type, description: str, writer: str, phases=(), where: str = HISTORY) -> Key:
    return Key(name, type, description, writers=(writer,), phases=phases, where=where)


#: Lightning's step of every ``log_metrics`` call (a fit's train and validation curves)
WANDB_STEP = _wandb("trainer/global_step", int, "Lightning's W&B step", "WandbLogger")
HEAL_EPOCH_STEP = _wandb("heal/epoch", int, "the healed curve's x-axis (0: unlearned start)", "log_heal_epoch", (HEAL,))
#: the healed model's validation accuracy at heal/epoch (its test accuracy, and the BL and GS references, are
#: logged there under their record names: healed/test/acc, baseline/test/acc, gold/test/acc)
HEALED_VAL_ACC_POINT = _wandb("healed/val/acc", float, "validation accuracy at heal/epoch", "log_heal_epoch", (HEAL,))
#: the healed curve's history keys, all plotted against :data:`HEAL_EPOCH_STEP`; the record's final figures of
#: the same names are the W&B summary
HEAL_CURVE_KEYS = (HEALED_TEST_ACC, HEALED_VAL_ACC_POINT, BASELINE_TEST_ACC, GOLD_TEST_ACC)
HEAL_CURVE_CHART = _wandb(
    "heal/curve", object, "the healed curve with BL and GS in one chart", "log_heal_chart", (HEAL,)
)
TWINS_TABLE = _wandb("twins", object, "a Table of the twins: images, classes, scores", "log_twins", (HEAL,))
TWINS_GRID = _wandb("twins/grid", object, "an image grid of forget samples beside their twins", "log_twins", (HEAL,))
FORGET_IDS_TABLE = _wandb("forget/ids", object, "a one-column Table of the forget set's ids", "write_record", _UH)
GRID_TABLE = _wandb("grid", object, "a grid's healed curves: method x setup x epoch", "log_grid_table")
LINEAGE_DECLARED = _wandb(
    "lineage/declared", str, "how the run declared its baseline artifact", "write_record", FROM_BASELINE, SUMMARY
)
LINEAGE_BASELINE_ARTIFACT = _wandb(
    "lineage/baseline_artifact", str, "the baseline's model artifact", "declare_baseline", FROM_BASELINE, CONFIG
)


def stream_history(point: str) -> Key:
    """The W&B history key of a stream round's metric (one of :data:`POINT_KEYS`): ``stream/<point>``, plotted
    against ``stream/round`` (``stream_history(CURVE_ROUND)``, the round's index)."""
    declared = next((k for k in POINT_KEYS if k == point), None)
    if declared is None:
        raise ValueError(f"'{point}' is not a key of a stream's curve points.")
    return Key(
        f"stream/{point}", declared.type, declared.description, writers=("run_stream",), phases=(STREAM,), where=HISTORY
    )


# --------------------------------------------------------------------------- reading
#: every declared record key, by name (the record's own keys: the families' members are found by :func:`lookup`)
KEYS: Mapping[str, Key] = _DECLARED
#: every family of record keys (the method-info family last: it matches any ``<name>/<info>``)
FAMILIES = (EVALUATION, MIA_FIGURE, MIA_TWINS_N, MIA_EFFICACY, GOLD_DISTANCE, HEALED_EPOCH, UNLEARN_KNOB, METHOD_INFO)


def lookup(name: str, methods: Iterable[str] = ()) -> Key | None:
    """The declaration of the record key ``name``: a declared constant, or a member of a family (of
    :data:`METHOD_INFO` only when its method is one of ``methods``, the unlearning methods' record names);
    None when nothing declares it."""
    if name in _DECLARED:
        return _DECLARED[name]
    for family in FAMILIES:
        parts = family.match(name)
        if parts is None or (family is METHOD_INFO and parts["method"] not in set(methods)):
            continue
        return family.key(**parts)
    return None


def get(record: Mapping[str, Any], key: Key[T], default: D = None) -> T | D:
    """``record[key]``, or ``default`` when the record lacks it or holds null."""
    value = record.get(key)
    return default if value is None else value


def number(record: Mapping[str, Any], key: Key) -> float | None:
    """``record[key]`` when it is a number (not a bool), else None."""
    value = record.get(key)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def per_epoch(record: Mapping[str, Any], split: str = "test") -> dict[int, Any]:
    """The healed curve of a record: epoch -> ``healed/<split>/acc_epoch_<epoch>`` (non-null values), by epoch."""
    points = {}
    for name, value in record.items():
        parts = HEALED_EPOCH.match(name)
        if parts is not None and parts["split"] == split and value is not None:
            points[int(parts["epoch"])] = value
    return dict(sorted(points.items()))


def header(
    *, dataset: str, backbone: str, run_dir: str, world_size: int, device: str, precision: str, threads: int
) -> dict:
    """The keys every record starts with (after ``phase``)."""
    return {
        DATASET: dataset,
        BACKBONE: backbone,
        RUN_DIR: run_dir,
        WORLD_SIZE: world_size,
        DEVICE: device,
        PRECISION: precision,
        THREADS: threads,
    }


def plain(record: Mapping) -> dict:
    """``record`` with plain ``str`` keys (a :class:`Key` is a ``str`` subclass; JSON, W&B and pickles get plain
    strings)."""
    return {str.__str__(k) if isinstance(k, str) else k: v for k, v in record.items()}


def undeclared(record: Mapping[str, Any], methods: Iterable[str] = ()) -> list[str]:
    """The keys of ``record`` that nothing declares, or whose value has another type than declared (one line
    each); empty for a record that keeps to the schema."""
    problems, methods = [], tuple(methods)
    for name, value in record.items():
        key = lookup(name, methods)
        if key is None:
            problems.append(f"{name}: not declared in healing_pl.records")
        elif not key.accepts(value):
            problems.append(f"{name}: {type(value).__name__} {value!r:.40}, declared {_type_name(key.type)}")
    return problems


def _type_name(declared) -> str:
    return " or ".join(t.__name__ for t in _types(declared))
