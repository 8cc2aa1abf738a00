"""The phases of an experiment, each a small module with a typed result.

    baseline.ckpt -> forget set F -> unlearn -> unlearned model -> evaluate
                          |                          |
                          v                          v
                 spare policy + similarity -> twins T -> heal (fine-tune on R + T)
                                                           |
                gold standard (cached by content hash) -> compare, record

==========  ==========================  =================================================
module      result                      what it does
==========  ==========================  =================================================
baseline    :class:`Baseline`           load the checkpoint, adopt its splits and recipe
forget      :class:`ForgetSet`          the adversary's requests, membership check, ledger
evaluate    :class:`Evaluation`         test / remain / forget accuracy of a model
gold        :class:`Gold`               the gold standard (retrain on R; cached)
unlearn     :class:`Unlearned`          the unlearning method with repeats (cached)
twins       :class:`TwinSet`            twins from the backup set under a spare policy
heal        :class:`HealCurve`          the fine-tune's test accuracy per epoch
stream      :class:`StreamResult`       request rounds, each unlearned (and healed)
record      results.json + W&B          the one writer of a run's record
==========  ==========================  =================================================

Every result has ``record() -> dict`` with namespaced keys (``baseline/``,
``gold/``, ``unlearned/``, ``twins/``, ``healed/``); only the writer
(:mod:`healing_pl.phases.record`) merges them. The phases run on the model's
device and dtype; :mod:`healing_pl.phases.distributed` runs them once on global
rank zero and hands their results to every rank.
"""
