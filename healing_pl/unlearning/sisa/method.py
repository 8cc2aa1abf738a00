"""SISA as an unlearning method (Bourtoule et al. 2021): the registered class and its knobs."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Literal

from healing_pl.codehash import MODEL_CODE, code_version
from healing_pl.models.classifier import evaluate
from healing_pl.unlearning.base import UNLEARNERS, Unlearner
from healing_pl.unlearning.naive import model_hparams
from healing_pl.unlearning.sisa.epochs import slice_epochs
from healing_pl.unlearning.sisa.train import train_sisa
from healing_pl.unlearning.sisa.unlearn import unlearn_sisa


@UNLEARNERS.register
class SISA(Unlearner):
    """SISA (Bourtoule et al. 2021): shards trained slice by slice.

    Unlearning retrains each affected shard from the slice that held a request (exact). The unlearned model is
    the ensemble (healing fine-tunes its affected shards)."""

    name = "sisa"
    label = "SISA"
    cacheable = False  # its shards keep their own cache
    ensemble = True

    def __init__(
        self,
        shards: int = 3,
        slices: int = 5,
        aggregation: Literal["vote", "softmax"] = "vote",
        epochs_per_slice: Literal["passes", "per_slice"] | int = "passes",
        shard: int | None = None,
        protocol: Literal["bourtoule", "paper"] = "bourtoule",
        **kwargs,
    ):
        """
        Args:
            shards: number of shards S.
            slices: slices R per shard.
            aggregation: how the shards' predictions combine: majority vote or averaged softmax.
            epochs_per_slice: epochs per slice stage: passes (ceil(2N/(R+1)): a shard's samples get at least
                the baseline's N passes, Bourtoule et al. 2021), per_slice (round(N/R)) or a count.
            shard: train only this shard into the cache and stop (one job per shard on a cluster); a later run
                without it aggregates the cached shards.
            protocol: bourtoule (slice stages on the union of slices 0..r, epochs_per_slice, aggregation) or paper
                (the paper's authors' protocol: 10% of every slice held out, stage r on slice r alone for the
                baseline's N epochs unless epochs_per_slice is a count, the vote weighted by each shard's
                held-out accuracy; aggregation must stay vote).
        """
        super().__init__(**kwargs)
        self._at_least({"shards": shards, "slices": slices}, 1)
        self._one_of("aggregation", aggregation, ("vote", "softmax"))
        if isinstance(epochs_per_slice, bool) or not (
            epochs_per_slice in ("passes", "per_slice") or isinstance(epochs_per_slice, int) and epochs_per_slice >= 1
        ):
            raise ValueError(
                f"unlearn.epochs_per_slice must be passes, per_slice or a count >= 1, got {epochs_per_slice!r}."
            )
        if shard is not None and not 0 <= shard < shards:
            raise ValueError(f"unlearn.shard must lie in [0, {shards}), got {shard}.")
        self._one_of("protocol", protocol, ("bourtoule", "paper"))
        if protocol == "paper" and aggregation != "vote":
            raise ValueError(
                f"unlearn.aggregation {aggregation} does not apply to unlearn.protocol paper, whose vote is weighted "
                "by each shard's held-out accuracy; leave it at vote."
            )
        self.protocol = protocol
        self.shards, self.slices, self.aggregation = shards, slices, aggregation
        self.epochs_per_slice, self.shard = epochs_per_slice, shard

    def epochs_per_slice_for(self, epochs: int) -> int | str:
        """The epochs_per_slice of train_sisa: the paper's protocol takes N epochs per slice unless given a count."""
        if self.protocol == "paper" and isinstance(self.epochs_per_slice, str):
            return epochs
        return self.epochs_per_slice

    def hyperparameters(self) -> dict:
        return {k: v for k, v in super().hyperparameters().items() if k != "shard"}

    def directory(self, model, datamodule, context) -> str | None:
        """The cache folder of the ensemble: a content hash of everything that determines its shards."""
        if not self.cache_dir:
            return None
        content = {
            "hparams": model_hparams(model),
            "primary": hashlib.sha256(datamodule.primary_ids.numpy().tobytes()).hexdigest(),
            "shards": self.shards,
            "slices": self.slices,
            "epochs": context.epochs,
            "epochs_per_slice": slice_epochs(context.epochs, self.slices, self.epochs_per_slice_for(context.epochs)),
            "protocol": self.protocol,
            "seed": context.seed,
            "batch_size": datamodule.hparams.batch_size,
            "dtype": str(next(model.parameters()).dtype),
            "code": code_version(
                "healing_pl.unlearning.sisa", "healing_pl.unlearning.loop", "healing_pl.gradients.params", *MODEL_CODE
            ),
        }
        key = hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:20]
        return os.path.join(self.cache_dir, f"sisa-{key}")

    def run(self, model, datamodule, forget_ids, context, seed):
        """Train (or load the cached shards of) the ensemble on the primary set, then unlearn exactly.

        The returned ensemble carries its state (:attr:`SisaEnsemble.state`), from which healing fine-tunes its shards.
        """
        param = next(model.parameters())
        state = train_sisa(
            model_hparams(model),
            datamodule,
            shards=self.shards,
            slices=self.slices,
            epochs=context.epochs,
            epochs_per_slice=self.epochs_per_slice_for(context.epochs),
            seed=context.seed,
            aggregation=self.aggregation,
            device=param.device,
            dtype=param.dtype,
            directory=self.directory(model, datamodule, context),
            progress=context.progress,
            protocol=self.protocol,
        )
        trained = evaluate(state.ensemble, datamodule.test_dataloader())["acc"]
        new_state, info = unlearn_sisa(state, forget_ids, datamodule, progress=context.progress)
        report = {
            "test/acc": trained,
            "train_time_s": state.train_time,
            "epochs_per_slice": state.epochs_per_slice,
            **{f"unlearn_{k}": v for k, v in info.items() if isinstance(v, (int, float, list, dict, str))},
        }
        ensemble = new_state.ensemble
        ensemble.state = new_state
        return ensemble, report
