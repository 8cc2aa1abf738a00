"""Lightning callbacks that run the phases of ``healing-pl heal`` around the fine-tune.

``heal`` is a ``fit`` of the unlearned model on the heal set: at the start of
fit :class:`UnlearnPhase` replaces the weights by the unlearned model's and
:class:`TwinSearch` points the training loader at R plus the twins; the
fine-tune is the fit itself; :class:`HealEvaluation` records the test
accuracy after every epoch (the paper's 1-epoch and N/2-epoch columns).
All three write into one shared ``record`` dict.
"""

from __future__ import annotations

import time

import lightning as L
import torch

from healing_pl.models.classifier import evaluate
from healing_pl.pipeline import evaluate_sets, find_twins, unlearn_record, unlearned_model


class UnlearnPhase(L.Callback):
    """Unlearn the forget set from the baseline (with repeats) and start the fine-tune from it."""

    def __init__(self, baseline, recipe: dict, forget_ids: torch.Tensor, cfg, record: dict, progress: bool = True):
        self.baseline, self.recipe, self.forget_ids, self.cfg = baseline, recipe, forget_ids, cfg
        self.record, self.progress = record, progress

    def on_fit_start(self, trainer, pl_module) -> None:
        dm = trainer.datamodule
        model, summary = unlearned_model(self.baseline, self.recipe, dm, self.forget_ids, self.cfg, self.progress)
        pl_module.load_state_dict(model.state_dict())
        self.record.update(unlearn_record(summary))
        self.record.update(evaluate_sets(pl_module, dm, self.forget_ids, "unlearned"))
        print(f"unlearned ({self.cfg.method}): test accuracy {self.record['unlearned/test/acc']:.4f} "
              f"(mean {summary['acc_mean']:.4f} ± {summary['acc_std']:.4f} over {len(summary['acc_repeats'])} runs)")


class TwinSearch(L.Callback):
    """Find twins for the forget set and train on the heal set R ∪ T."""

    def __init__(self, baseline, forget_ids: torch.Tensor, cfg, record: dict, on_twins=None):
        self.baseline, self.forget_ids, self.cfg, self.record = baseline, forget_ids, cfg, record
        self.on_twins = on_twins  # called with the twin records (e.g. to write them to the ledger)

    def on_fit_start(self, trainer, pl_module) -> None:
        dm = trainer.datamodule
        start = time.perf_counter()
        pairs = find_twins(self.cfg, self.baseline, dm, self.forget_ids)
        twin_ids = [p["twin_id"] for p in pairs]
        dm.set_train_ids(dm.heal_ids(self.forget_ids, twin_ids))
        same = sum(int(dm.targets[p["twin_id"]] == dm.targets[p["request_id"]]) for p in pairs)
        self.record.update({"twins/pairs": pairs, "twins/count": len(pairs), "twins/time_s": time.perf_counter() - start,
                            "twins/same_class": same / len(pairs) if pairs else None,
                            "heal/train_size": len(dm.train_ids)})
        if self.on_twins is not None and pairs:
            self.on_twins(pairs)


class HealEvaluation(L.Callback):
    """Test accuracy of the healed model after every fine-tuning epoch."""

    def __init__(self, record: dict):
        self.record = record

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch + 1
        acc = evaluate(pl_module, trainer.datamodule.test_dataloader())["acc"]
        self.record[f"healed/test/acc_epoch_{epoch}"] = acc
        pl_module.log("healed/test/acc", acc)
