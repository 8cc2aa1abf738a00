"""The unlearning-conventions experiment of docs/conventions.md: Influence removal x LiSSA damping convention
and Fisher noise shaping x alpha, on one mnist5k baseline (class-7 and worst-25-logits forget sets).

    healing-pl fit --config configs/mnist5k.yaml --run_dir runs/base
    python docs/conventions_experiment.py 50 10      # LiSSA depth J, scale s; writes exp_J50_S10.json

The three removals share one LiSSA estimate per damping convention (25 requests are one forget batch), and
differ only by the factor applied after it, exactly as ``influence_unlearn`` does.
"""

# ruff: noqa: E731, E702, E401
import json
import sys
import time

import torch

from healing_pl.adversary import SELECTORS
from healing_pl.data.datamodule import HealingDataModule
from healing_pl.gradients.fisher import diagonal_fisher
from healing_pl.gradients.lissa import cross_entropy_loss, lissa_inverse_hvp
from healing_pl.gradients.params import add_, flatten, trainable_parameters, unflatten
from healing_pl.models.classifier import evaluate, load_classifier
from healing_pl.phases.forget import select_forget_ids
from healing_pl.unlearning.fisher import noise_variance

torch.manual_seed(0)
torch.set_num_threads(1)
ckpt = "runs/base/checkpoints/last.ckpt"
base = load_classifier(ckpt)
dm = HealingDataModule(dataset="mnist5k", primary=0.6, backup=0.1, val=0.1, batch_size=64, seed=0)
dm.load_state_dict(base.checkpoint[type(dm).__qualname__])
dm.setup("fit")
test = dm.test_dataloader()
acc = lambda m: evaluate(m, test)["acc"]
out = {"baseline": acc(base)}
J, S = int(sys.argv[1]), float(sys.argv[2])
sets = {
    "class7": SELECTORS["class"](target_class=7, budget=25),
    "worst_logits": SELECTORS["worst_logits"](system_knowledge="output_aware", budget=25),
}
n = len(dm.primary_ids)
for name, adv in sets.items():
    forget = select_forget_ids(adv, base, dm)
    remain = dm.remain_ids(forget)
    model = load_classifier(ckpt).eval()
    params = trainable_parameters(model)
    x, y = next(iter(dm.loader(forget, batch_size=64)))
    g = flatten(torch.autograd.grad(cross_entropy_loss(model, (x, y)) * len(y), params))
    for conv, d in (("additive", 1e-6), ("koh_liang", 1e-3 / S)):
        t0 = time.perf_counter()
        u = lissa_inverse_hvp(
            model,
            cross_entropy_loss,
            dm.loader(remain, shuffle=True, batch_size=128, seed=0),
            g,
            damping=d,
            scale=S,
            depth=J,
            damping_convention=conv,
        )
        dt = time.perf_counter() - t0
        for removal, c in (("mean", 1 / n), ("sum", 1.0), ("batch", 1 / len(y))):
            m = load_classifier(ckpt).eval()
            add_(trainable_parameters(m), unflatten(u * c, trainable_parameters(m)))
            out[f"influence/{name}/{removal}/{conv}(d={d:g})"] = {"acc": acc(m), "lissa_s": dt}
forget = select_forget_ids(sets["class7"], base, dm)
remain = dm.remain_ids(forget)
fisher = diagonal_fisher(base, dm.loader(remain, batch_size=512), "true")
for shaping in ("plain", "golatkar"):
    for alpha in (1e-7, 3e-7, 1e-6, 3.5e-6, 1e-5, 3e-5, 1e-4, 3.5e-3):
        accs = []
        for seed in (0, 1, 2):
            m = load_classifier(ckpt).eval()
            gen = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                for pn, p in m.named_parameters():
                    p += noise_variance(fisher[pn], alpha, shaping, dm.num_classes).sqrt() * torch.randn(
                        p.shape, generator=gen
                    )
            accs.append(acc(m))
        out[f"fisher/{shaping}/alpha={alpha:g}"] = accs
json.dump(out, open(f"exp_J{J}_S{S:g}.json", "w"), indent=1)
