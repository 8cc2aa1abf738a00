"""The diagonal Fisher information of a cross-entropy classifier: the curvature of Fisher forgetting.

``diagonal_fisher(model, loader, kind)``
    The diagonal of the Fisher information matrix of a classifier trained with
    cross-entropy, averaged over the samples of ``loader``::

        true:       F_k = 1/N sum_i sum_c p(c|x_i) (d/d theta_k  CE(f(x_i), c))^2
        empirical:  F_k = 1/N sum_i               (d/d theta_k  CE(f(x_i), y_i))^2
        batch_mean: F_k = 1/K sum_b (d/d theta_k  1/|B_b| sum_{i in B_b} CE(f(x_i), y_i))^2

    with p = softmax of the model's logits (treated as a constant).  The first
    two are per-sample estimators; ``batch_mean`` squares the gradient of each batch's *mean* loss
    and averages over the ``K`` batches of the loader, so it depends on the
    batch size (it is roughly the per-sample empirical Fisher divided by the
    batch size, plus the squared mean gradient).
    :func:`diagonal_fisher_and_count` also returns the number of samples it
    averaged over.

How the diagonal Fisher is computed
-----------------------------------
Looping over samples one at a time is slow, so per-sample gradients are
rebuilt from quantities a single batched backward pass already has:

* ``nn.Linear``: the gradient of one sample's loss with respect to the weight
  is ``outer(g_i, a_i)``, where ``a_i`` is the layer's input and ``g_i`` the
  gradient of that sample's loss with respect to the layer's output.  The sum
  over samples of its square is ``(g**2).T @ (a**2)``: no per-sample tensor
  is ever built.
* ``nn.Conv2d`` (and a Linear applied at several positions, e.g. tokens):
  the per-sample gradient is that outer product summed over the positions
  ``l`` (output pixels; the input is the patch the kernel sees).  With many
  positions it is built for all samples at once by one grouped convolution
  of the input with the output gradients (``_conv_weight_per_sample``) and
  squared.  With few positions (at most ``_PAIR_MAX_POSITIONS``: deep layers
  of a CNN on small images) the square is expanded over position pairs,
  ``sum_{l,l'} (g_l * g_l').T @ (a_l * a_l')``, which needs no per-sample
  tensor; the Linear case above is ``L = 1``.  Padding, padding modes,
  stride, dilation and groups (depthwise convolutions) are all covered; the
  bias gradient is ``g`` summed over positions.

The layer inputs are captured by forward hooks, and the gradients with respect
to the layer outputs by ``torch.autograd.grad`` with the outputs as the
inputs of the derivative (so the parameters' own gradients are not computed,
except once for the first-batch check below).
For a batch, the cotangent at the logits that gives sample ``i``'s
cross-entropy gradient for class ``c`` is ``p_i - e_c``; one backward pass with
the cotangent ``p - onehot(y)`` gives every sample's gradient for the
empirical Fisher at once.  The true Fisher needs one backward pass per class:
pass ``c`` uses the rows ``sqrt(p_ic) * (e_c - p_i)`` whose squared gradients
are exactly the ``p(c|x_i)``-weighted terms of the definition.  All passes
share one forward pass; in the position-pair form the products of output
gradients are summed over classes before the single weight-sized matrix
product, so those layers cost hardly more for the true Fisher.

* BatchNorm in eval mode (running statistics), LayerNorm and GroupNorm:
  ``y = x_hat * weight + bias``, so the per-sample gradients are ``g * x_hat``
  and ``g`` summed over the positions the parameter is broadcast over
  (``x_hat`` recomputed from the captured input).

Every other trainable parameter (e.g. PReLU, a module subclass with its own
``forward`` such as weight-standardised or dynamically padded convolutions
or timm's BatchNormAct2d, parametrised or tied weights, parameters used
directly in a parent's ``forward`` such as attention projections) falls back
to exact per-sample gradients of the same cotangents from the shared engine
(:mod:`.per_sample`): ``torch.func`` (``functional_call`` + ``vjp`` inside
``vmap``), computed for those parameters only; if the model cannot run under
``vmap`` (or disagrees with the engine's per-sample loop on the first
samples), the per-sample loop with ``torch.autograd.grad`` is used instead.
On the first batch, the hook-based gradients of each layer are checked
against autograd's own gradient for a random cotangent, and a layer that
fails the check (its weight is also used outside its own ``forward``) or
whose input does not have the batch as its first dimension moves to the
fallback.
The Fisher is therefore exact for any model, just slower for unusual layers.

The model runs in eval mode during the computation (BatchNorm uses its
running statistics, so samples are independent; dropout is off); every
module's training flag is restored afterwards, and the hooks are removed.
Batches are moved to the model's device and floating dtype (a float64 model
gets float64 inputs from a float32 loader) and everything is computed there.
"""

from __future__ import annotations

import warnings
from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from tqdm.auto import tqdm

from .params import eval_mode, to_model, trainable_named_parameters
from .per_sample import sum_of_squares

__all__ = ["KINDS", "diagonal_fisher", "diagonal_fisher_and_count", "split_batch"]

#: Largest number of elements one temporary per-sample tensor may hold; the
#: batch is processed in chunks of samples to stay below it.
_CHUNK_ELEMENTS = 1 << 24

#: Relative tolerance and number of samples of the first-batch check of the
#: Linear/Conv2d identity against autograd.
_CHECK_RTOL = 1e-3
_CHECK_SAMPLES = 8

#: A Linear/Conv2d called once with at most this many positions per sample
#: (tokens, output pixels) uses the position-pair form instead of building
#: per-sample gradients: faster when there are few positions (deep layers of a
#: CNN on small images, plain Linear layers with L = 1).
_PAIR_MAX_POSITIONS = 9

#: Up to this many output pixels, per-sample Conv2d gradients come from the
#: unfolded input and a batched matrix product, above it from one grouped
#: convolution (measured on the CPU: each is up to 2x faster on its side).
_UNFOLD_MAX_POSITIONS = 128

#: The Fisher estimators (see :func:`diagonal_fisher`): two per sample, one per batch.
KINDS = ("true", "empirical", "batch_mean")


# --------------------------------------------------------------------------
# layer identities
# --------------------------------------------------------------------------


def _layer_type(module: nn.Module) -> str | None:
    """The name of the identity that gives this module's per-sample gradients, if any.

    Only modules whose ``forward`` is the stock one qualify (a subclass that
    overrides it computes something else with the same parameters).
    """
    if parametrize.is_parametrized(module):
        return None
    kind = type(module)
    if isinstance(module, nn.Linear) and kind.forward is nn.Linear.forward:
        return "linear"
    if (
        isinstance(module, nn.Conv2d)
        and kind.forward is nn.Conv2d.forward
        and kind._conv_forward is nn.Conv2d._conv_forward
    ):
        return "conv2d"
    if (
        isinstance(module, nn.modules.batchnorm._BatchNorm)
        and kind.forward is nn.modules.batchnorm._BatchNorm.forward
        and not module.training
        and module.track_running_stats
        and module.running_mean is not None
        and module.running_var is not None
    ):
        return "batchnorm"  # eval mode: a fixed per-channel affine map
    if isinstance(module, nn.LayerNorm) and kind.forward is nn.LayerNorm.forward:
        return "layernorm"
    if isinstance(module, nn.GroupNorm) and kind.forward is nn.GroupNorm.forward:
        return "groupnorm"
    return None


def _normalized_input(module: nn.Module, kind: str, x: Tensor) -> Tensor:
    """The input of a normalisation layer before its affine weight and bias."""
    if kind == "batchnorm":
        shape = (1, -1) + (1,) * (x.dim() - 2)
        mean = module.running_mean.view(shape).to(x.dtype)
        var = module.running_var.view(shape).to(x.dtype)
        return (x - mean) * torch.rsqrt(var + module.eps)
    if kind == "layernorm":
        return F.layer_norm(x, module.normalized_shape, None, None, module.eps)
    return F.group_norm(x, module.num_groups, None, None, module.eps)


def _conv_weight_per_sample(conv: nn.Conv2d, x: Tensor, g: Tensor, patches: dict | None = None) -> Tensor:
    """Per-sample weight gradients ``(B, *conv.weight.shape)`` of one Conv2d call.

    The gradient of sample ``b``'s loss with respect to ``weight[o, i]`` is the
    cross-correlation of the (padded) input channel ``x[b, i]`` with the output
    gradient ``g[b, o]`` used as the kernel, where the forward stride becomes
    the kernel's dilation and the forward dilation becomes the stride.  One
    grouped convolution does it for all samples, channels and groups at once:
    the input channels of the layer play the role of the batch and every
    (sample, group) pair is one group.  For large feature maps this is much
    faster on the CPU than ``F.unfold`` (im2col) and never builds the unfolded
    input; for small ones (at most ``_UNFOLD_MAX_POSITIONS`` output pixels)
    the unfolded input is small and one batched matrix product is faster.
    ``patches``: a cache of unfolded inputs keyed by the input tensor, kept by the caller while ``x`` lives (the
    true Fisher's classes share one input).
    """
    b, cin = x.shape[:2]
    cout = g.shape[1]
    groups = conv.groups
    kh, kw = conv.kernel_size
    if g.shape[-2] * g.shape[-1] <= _UNFOLD_MAX_POSITIONS:
        # few output pixels: the unfolded input is small and a batched matrix
        # product per (sample, group) beats the grouped convolution
        unfolded = patches.get(x) if patches is not None else None
        if unfolded is None:
            unfolded = _inputs_by_position(conv, "conv2d", x)  # (B, Cin*kh*kw, L)
            if patches is not None:
                patches[x] = unfolded
        if unfolded.shape[-1] != g.shape[-2] * g.shape[-1]:
            raise _Unsupported
        n = unfolded.shape[-1]
        a = unfolded.reshape(b * groups, -1, n).transpose(1, 2)
        go = g.reshape(b * groups, cout // groups, n)
        return torch.bmm(go, a).reshape(b, *conv.weight.shape)
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
        x = F.pad(x, conv._reversed_padding_repeated_twice, mode=mode)
        padding = (0, 0)
    else:
        padding = conv.padding
    h, w = x.shape[-2:]
    ho, wo = g.shape[-2:]
    # (Cin/G, B*G, H, W): the input channels within a group act as the batch
    inputs = x.reshape(b, groups, cin // groups, h, w).permute(2, 0, 1, 3, 4)
    inputs = inputs.reshape(cin // groups, b * groups, h, w)
    kernels = g.reshape(b * cout, 1, ho, wo)
    out = F.conv2d(inputs, kernels, stride=conv.dilation, padding=padding, dilation=conv.stride, groups=b * groups)
    if out.shape[-2] < kh or out.shape[-1] < kw:
        raise _Unsupported
    out = out[..., :kh, :kw]
    return out.reshape(cin // groups, b, cout, kh, kw).permute(1, 2, 0, 3, 4)


def _num_positions(kind: str, output: Tensor) -> int:
    """Positions per sample a Linear/Conv2d weight is applied at (tokens, output pixels)."""
    if kind == "linear":
        return output[:1].numel() // output.shape[-1]
    return output.shape[-2] * output.shape[-1]


def _pair_indices(n: int, device) -> tuple[Tensor, Tensor, Tensor]:
    """Position pairs ``l <= l'`` and their multiplicity (1 on the diagonal, else 2)."""
    i0, i1 = torch.triu_indices(n, n, device=device)
    return i0, i1, torch.where(i0 == i1, 1.0, 2.0)


def _output_grads_by_position(kind: str, g: Tensor) -> Tensor:
    """``(B, Cout, L)`` output gradients of a Linear/Conv2d call."""
    b = g.shape[0]
    if kind == "linear":
        return g.reshape(b, -1, g.shape[-1]).transpose(1, 2)
    return g.reshape(b, g.shape[1], -1)


def _inputs_by_position(module: nn.Module, kind: str, x: Tensor) -> Tensor:
    """``(B, I, L)``: what the weight multiplies at each position (input rows or patches)."""
    b = x.shape[0]
    if kind == "linear":
        return x.reshape(b, -1, x.shape[-1]).transpose(1, 2)
    if module.padding_mode != "zeros" or isinstance(module.padding, str):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
        padding = 0
    else:
        padding = module.padding
    return F.unfold(x, module.kernel_size, dilation=module.dilation, padding=padding, stride=module.stride)


def _per_sample_grads(
    module: nn.Module, kind: str, x: Tensor, g: Tensor, patches: dict | None = None
) -> dict[str, Tensor]:
    """Per-sample gradients ``{"weight": (B, *w.shape), "bias": (B, *b.shape)}`` of one call.

    ``x`` is the layer input and ``g`` the gradient with respect to its output
    for the same samples.  ``kind`` is the module's ``_layer_type``; ``patches`` as for
    :func:`_conv_weight_per_sample`.
    """
    b = x.shape[0]
    out: dict[str, Tensor] = {}
    if kind == "linear":
        a = x.reshape(b, -1, x.shape[-1])
        go = g.reshape(b, -1, g.shape[-1])
        if module.weight.requires_grad:
            out["weight"] = torch.einsum("bto,bti->boi", go, a)
        if module.bias is not None and module.bias.requires_grad:
            out["bias"] = go.sum(1)
        return out
    if kind == "conv2d":
        if module.weight.requires_grad:
            out["weight"] = _conv_weight_per_sample(module, x, g, patches)
        if module.bias is not None and module.bias.requires_grad:
            out["bias"] = g.reshape(b, g.shape[1], -1).sum(-1)
        return out
    # normalisation layers: y = x_hat * weight + bias, broadcast over the
    # positions that are not the weight's own dimensions
    weight = module.weight if module.weight is not None else module.bias
    if kind == "layernorm":  # weight covers the trailing dimensions
        dims = tuple(range(1, x.dim() - weight.dim()))
    else:  # weight is per channel (dimension 1)
        dims = tuple(range(2, x.dim()))
    if module.weight is not None and module.weight.requires_grad:
        prod = g * _normalized_input(module, kind, x)
        out["weight"] = prod.sum(dims) if dims else prod
    if module.bias is not None and module.bias.requires_grad:
        out["bias"] = g.sum(dims) if dims else g
    return out


class _Unsupported(Exception):
    """A layer's call does not fit the identity (the layer moves to the fallback)."""


# --------------------------------------------------------------------------
# the computation
# --------------------------------------------------------------------------


class _FisherComputer:
    """Holds the hooks, the split into fast layers and fallback parameters, and the sums."""

    def __init__(self, model: nn.Module, kind: str):
        self.model = model
        self.kind = kind
        self.named = trainable_named_parameters(model)
        param_names = {id(p): n for n, p in self.named}
        owners: dict[int, int] = defaultdict(int)
        for m in model.modules():
            for p in m.parameters(recurse=False):
                owners[id(p)] += 1
        # fast layers: module -> (layer type, {"weight": name, "bias": name})
        self.fast: dict[nn.Module, tuple[str, dict[str, str]]] = {}
        for m in model.modules():
            layer = _layer_type(m)
            if layer is None:
                continue
            own_trainable = [p for p in m.parameters(recurse=False) if p.requires_grad]
            names = {
                attr: param_names[id(p)]
                for attr in ("weight", "bias")
                if isinstance(p := getattr(m, attr, None), nn.Parameter) and p.requires_grad and owners[id(p)] == 1
            }
            if names and len(names) == len(own_trainable):
                self.fast[m] = (layer, names)
        self.sums = {n: torch.zeros_like(p, memory_format=torch.contiguous_format) for n, p in self.named}
        self.count = 0
        self.checked = False
        self.fallback_mode: str | None = None  # "vmap" or "loop" once checked
        self.records: dict[nn.Module, list[tuple[Tensor, Tensor]]] = defaultdict(list)
        self.patches: dict[Tensor, Tensor] = {}  # this batch's unfolded layer inputs (see _conv_weight_per_sample)
        self.recording = False
        self.batch = 0
        self.bad: set[nn.Module] = set()
        self.handles = [m.register_forward_hook(self._hook) for m in self.fast]

    # -- bookkeeping -------------------------------------------------------

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
        self.records.clear()
        self.patches.clear()

    def fallback_names(self) -> list[str]:
        fast = {n for _, names in self.fast.values() for n in names.values()}
        return [n for n, _ in self.named if n not in fast]

    def demote(self, modules) -> None:
        for m in modules:
            if self.fast.pop(m, None) is not None:
                self.fallback_mode = None  # new fallback parameters: check again

    def _fallback(self, names: list[str], x: Tensor, cots: Tensor) -> dict[str, Tensor]:
        """Exact ``sum_i sum_k (J_i^T cots[k, i])^2`` for the parameters ``names``.

        Uses the shared per-sample engine (:mod:`.per_sample`) with
        ``engine="vmap"`` when it runs this model and agrees with the
        engine's per-sample loop on the first samples it sees (a missing or
        wrong batching rule must not go unnoticed); otherwise ``"loop"``.
        """
        w = cots.transpose(0, 1)  # (B, K, C): sample i's cotangents at its logits

        def squares(engine: str, rows: slice) -> dict[str, Tensor]:
            return sum_of_squares(
                self.model, x[rows], cotangents=w[rows], names=names, engine=engine, max_elements=_CHUNK_ELEMENTS
            )

        if self.fallback_mode is None:
            k = slice(0, min(_CHECK_SAMPLES, x.shape[0]))
            try:
                fast = squares("vmap", k)
                slow = squares("loop", k)
                bad = [
                    n
                    for n in names
                    if float((fast[n] - slow[n]).norm()) > _CHECK_RTOL * float(fast[n].norm() + slow[n].norm())
                ]
                reason = f"it disagrees with autograd for {bad}" if bad else ""
            except Exception as err:  # noqa: BLE001 - any vmap limitation: use the loop
                reason = f"{type(err).__name__}: {err}"
            if reason:
                warnings.warn(
                    f"diagonal_fisher: torch.func cannot be used on this model ({reason}); "
                    "the parameters outside the Linear/Conv2d/norm layers use a per-sample loop.",
                    RuntimeWarning,
                    stacklevel=4,
                )
            self.fallback_mode = "loop" if reason else "vmap"
        return squares(self.fallback_mode, slice(None))

    def _hook(self, module, args, output):
        if not self.recording or module not in self.fast:
            return None
        x = args[0] if args else None
        if (
            not isinstance(x, Tensor)
            or not isinstance(output, Tensor)
            or x.dim() < 2
            or x.shape[0] != self.batch
            or output.shape[0] != self.batch
            or (self.fast[module][0] == "conv2d" and x.dim() != 4)
        ):
            self.bad.add(module)
            return None
        if not output.requires_grad:
            return None
        self.records[module].append((x.detach(), output))
        # The rest of the network gets a copy, so that an in-place operation
        # after the layer (e.g. ReLU(inplace=True)) cannot change the tensor
        # whose gradient we ask for.
        return output.clone()

    def _forward(self, x: Tensor) -> Tensor:
        self.records.clear()
        self.patches.clear()
        self.bad = set()
        self.batch = x.shape[0]
        self.recording = True
        try:
            logits = self.model(x)
        finally:
            self.recording = False
        if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != x.shape[0]:
            raise ValueError("diagonal_fisher needs a model that returns logits of shape (batch, classes).")
        return logits

    # -- self-check on the first batch -----------------------------------

    def _check(self, logits: Tensor, calls) -> set[nn.Module]:
        """The fast layers whose identity-based gradient disagrees with autograd's.

        Uses a random cotangent at the logits, so the check cannot pass by
        accident on a model whose loss gradient happens to vanish, on the first
        ``_CHECK_SAMPLES`` samples of the batch only (the other rows of the
        cotangent are zero), which keeps the per-sample part cheap.
        """
        params = [getattr(m, attr) for m, (_, names) in self.fast.items() for attr in names]
        k = min(_CHECK_SAMPLES, logits.shape[0])
        gen = torch.Generator().manual_seed(1234)
        cot = torch.zeros_like(logits)
        cot[:k] = torch.randn((k, logits.shape[1]), generator=gen, dtype=logits.dtype).to(logits.device)
        outs = [rec[1] for _, rec in calls]
        grads = torch.autograd.grad(logits, outs + params, cot, retain_graph=True, allow_unused=True)
        true = dict(zip((id(p) for p in params), grads[len(outs) :], strict=True))
        ident: dict[int, Tensor] = {}
        broken: set[nn.Module] = set()
        per_module: dict[nn.Module, list[tuple[Tensor, Tensor]]] = defaultdict(list)
        for (m, (xin, _)), g in zip(calls, grads[: len(outs)], strict=True):
            if g is not None:
                per_module[m].append((xin[:k], g[:k]))
        for m, pairs in per_module.items():
            layer = self.fast[m][0]
            try:
                if layer in ("linear", "conv2d"):  # sum_i sum_l g_il a_il^T as one product
                    summed = {"weight": 0, "bias": 0}
                    groups = m.groups if layer == "conv2d" else 1
                    for a, g in pairs:
                        go = _output_grads_by_position(layer, g)
                        a = _inputs_by_position(m, layer, a)
                        if a.shape[-1] != go.shape[-1]:
                            raise _Unsupported
                        b, cout, n = go.shape
                        w = torch.einsum(
                            "bgol,bgil->goi", go.reshape(b, groups, cout // groups, n), a.reshape(b, groups, -1, n)
                        )
                        summed["weight"] = summed["weight"] + w.reshape(m.weight.shape)
                        summed["bias"] = summed["bias"] + go.sum((0, 2))
                else:
                    summed = self._chunked(m, pairs, square=False)
            except _Unsupported:
                broken.add(m)
                continue
            for attr in self.fast[m][1]:
                ident[id(getattr(m, attr))] = summed[attr]
        for m, (_, names) in self.fast.items():
            for attr in names:
                p = getattr(m, attr)
                t = true[id(p)]
                t = torch.zeros_like(p) if t is None else t
                s = ident.get(id(p), torch.zeros_like(p))
                scale = float(t.norm() + s.norm())
                if scale > 0 and float((t - s).norm()) > _CHECK_RTOL * scale:
                    broken.add(m)
        return broken

    # -- one batch ---------------------------------------------------------

    def cotangents(self, logits: Tensor, y: Tensor | None) -> Tensor:
        """``(K, B, C)`` cotangents at the logits whose squared gradients sum to the Fisher."""
        p = torch.softmax(logits.detach(), dim=-1)
        c = p.shape[1]
        if self.kind == "empirical":
            if y is None:
                raise ValueError("the empirical Fisher needs labels: the loader must yield (x, y) batches.")
            onehot = F.one_hot(y.to(p.device).long(), c).to(p.dtype)
            return (p - onehot).unsqueeze(0)
        eye = torch.eye(c, dtype=p.dtype, device=p.device)
        # cots[k, i] = sqrt(p_ik) * (e_k - p_i)
        return p.T.sqrt().unsqueeze(-1) * (eye.unsqueeze(1) - p.unsqueeze(0))

    def process(self, x: Tensor, y: Tensor | None) -> bool:
        """Add one batch to the sums; False (nothing added) if a layer had to be demoted."""
        logits = self._forward(x)
        if self.bad:
            self.demote(self.bad)
            return False
        calls = [(m, rec) for m, recs in self.records.items() for rec in recs]
        if not self.checked:
            broken = self._check(logits, calls)
            self.checked = True
            if broken:
                self.demote(broken)
                return False
        cots = self.cotangents(logits, y)
        batch_sums: dict[str, Tensor] = {}

        def add(name: str, value: Tensor) -> None:
            batch_sums[name] = batch_sums[name] + value if name in batch_sums else value

        if calls:
            outs = [rec[1] for _, rec in calls]
            # Linear/Conv2d layers called once with few positions per sample:
            # position-pair form, output-gradient products summed over the
            # cotangents, one matrix product per layer at the end.
            paired = {
                m: _pair_indices(n, x.device)
                for m, recs in self.records.items()
                if self.fast[m][0] in ("linear", "conv2d")
                and len(recs) == 1
                and (n := _num_positions(self.fast[m][0], recs[0][1])) <= _PAIR_MAX_POSITIONS
            }
            gg: dict[nn.Module, Tensor] = {}
            for k in range(cots.shape[0]):
                grads = torch.autograd.grad(
                    logits, outs, cots[k], retain_graph=k + 1 < cots.shape[0], allow_unused=True
                )
                per_module: dict[nn.Module, list[tuple[Tensor, Tensor]]] = defaultdict(list)
                for (m, (xin, _)), g in zip(calls, grads, strict=True):
                    if g is not None:
                        per_module[m].append((xin, g))
                del grads
                for m, pairs in per_module.items():
                    layer, names = self.fast[m]
                    if m in paired:
                        go = _output_grads_by_position(layer, pairs[0][1])  # (B, Cout, L)
                        i0, i1, _ = paired[m]
                        prod = go[:, :, i0] * go[:, :, i1]
                        gg[m] = gg[m] + prod if m in gg else prod
                        if "bias" in names:
                            add(names["bias"], go.sum(-1).square().sum(0))
                        continue
                    try:
                        for attr, value in self._chunked(m, pairs, square=True).items():
                            add(names[attr], value)
                    except _Unsupported:
                        self.demote([m])
                        return False
            for m, prod in gg.items():
                layer, names = self.fast[m]
                if "weight" not in names:
                    continue
                try:
                    inputs = _inputs_by_position(m, layer, self.records[m][0][0])  # (B, I, L)
                except _Unsupported:
                    self.demote([m])
                    return False
                i0, i1, weight = paired[m]
                if inputs.shape[-1] != int(i1.max()) + 1:
                    self.demote([m])
                    return False
                inputs = inputs[:, :, i0] * inputs[:, :, i1] * weight.to(inputs.dtype)
                groups = m.groups if layer == "conv2d" else 1
                b, cout, npairs = prod.shape
                value = torch.einsum(
                    "bgop,bgip->goi",
                    prod.reshape(b, groups, cout // groups, npairs),
                    inputs.reshape(b, groups, -1, npairs),
                )
                add(names["weight"], value.reshape(m.weight.shape))
        del logits
        self.records.clear()
        self.patches.clear()
        fallback = self.fallback_names()
        if fallback:
            for name, value in self._fallback(fallback, x, cots).items():
                add(name, value)
        for name, value in batch_sums.items():
            self.sums[name] += value
        self.count += x.shape[0]
        return True

    def _chunked(self, m: nn.Module, pairs, *, square: bool) -> dict[str, Tensor]:
        """Sum over samples of the per-sample gradients of ``m`` (squared if ``square``).

        The gradients of all the calls of ``m`` are added per sample before
        squaring (a layer used twice has one gradient per sample).  Samples are
        processed in chunks so the per-sample tensors stay small.
        """
        layer, _ = self.fast[m]
        b = pairs[0][0].shape[0]
        per_sample = sum(p.numel() for p in m.parameters(recurse=False)) + sum(xin[:1].numel() for xin, _ in pairs)
        chunk = max(1, _CHUNK_ELEMENTS // max(1, per_sample))
        out: dict[str, Tensor] = {}
        for start in range(0, b, chunk):
            stop = min(b, start + chunk)
            total: dict[str, Tensor] = {}
            for xin, g in pairs:
                # a batch in one chunk reuses its unfolded inputs (keyed by the input) for every class of the true
                # Fisher
                whole = stop - start == b
                chunk_in, patches = (xin, self.patches) if whole else (xin[start:stop], None)
                for attr, t in _per_sample_grads(m, layer, chunk_in, g[start:stop], patches).items():
                    total[attr] = total[attr] + t if attr in total else t
            for attr, t in total.items():
                t = (t.square() if square else t).sum(0)
                out[attr] = out[attr] + t if attr in out else t
        return out


def split_batch(batch) -> tuple[Tensor, Tensor | None]:
    """``(x, y)`` of a loader's batch: an ``(x, y, ...)`` sequence, or a bare ``x`` (then ``y`` is None)."""
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (list, tuple)) and len(batch) >= 1:
        return batch[0], (batch[1] if len(batch) > 1 else None)
    raise TypeError("diagonal_fisher expects a loader of (x, y) batches.")


def diagonal_fisher_and_count(
    model: nn.Module, loader, kind: str = "true", *, progress: bool = False, desc: str = "Fisher"
) -> tuple[dict[str, Tensor], int]:
    """:func:`diagonal_fisher` plus the number of samples it averaged over (``desc``: the progress bar's label)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
    if kind == "batch_mean":
        return _batch_mean_fisher(model, loader, progress=progress, desc=desc)
    with eval_mode(model):
        comp = _FisherComputer(model, kind)
        try:
            for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
                x, y = to_model(split_batch(batch), model)
                if x.shape[0] == 0:
                    continue
                while not comp.process(x, y):
                    pass  # a layer was moved to the fallback: redo the batch
        finally:
            comp.close()
    if comp.count == 0:
        raise ValueError("the loader yielded no samples, so the Fisher is undefined.")
    fisher = {n: (s / comp.count).detach() for n, s in comp.sums.items()}
    return fisher, comp.count


def _batch_mean_fisher(model: nn.Module, loader, *, progress: bool, desc: str) -> tuple[dict[str, Tensor], int]:
    """The ``batch_mean`` estimator: the mean over batches of the squared gradient of each batch's mean loss."""
    named = trainable_named_parameters(model)
    sums = {n: torch.zeros_like(p) for n, p in named}
    batches = samples = 0
    with eval_mode(model):
        for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
            x, y = to_model(split_batch(batch), model)
            if x.shape[0] == 0:
                continue
            if y is None:
                raise ValueError("the batch-mean Fisher needs labels: the loader must yield (x, y) batches.")
            loss = F.cross_entropy(model(x), y)
            grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
            for (n, _), g in zip(named, grads, strict=True):
                if g is not None:
                    sums[n] += g.detach().square()
            batches += 1
            samples += x.shape[0]
    if batches == 0:
        raise ValueError("the loader yielded no samples, so the Fisher is undefined.")
    return {n: s / batches for n, s in sums.items()}, samples


def diagonal_fisher(model: nn.Module, loader, kind: str = "true", *, progress: bool = False) -> dict[str, Tensor]:
    """Diagonal Fisher information of a cross-entropy classifier, averaged over samples.

    Args:
        model: a module mapping a batch of inputs to logits ``(B, C)``.
        loader: an iterable of ``(x, y)`` batches (labels are only read for
            ``kind="empirical"``).
        kind: ``"true"``: ``sum_c p(c|x) * grad CE(x, c)**2`` (``p`` from the
            model, treated as constant); ``"empirical"``: ``grad CE(x, y)**2``
            with the dataset's label ``y``; ``"batch_mean"``: the squared
            gradient of each batch's mean loss, averaged over the batches
            (the loader's batch size matters).
        progress: show a progress bar over the batches.

    Returns:
        ``{name: tensor}`` for every trainable parameter (names as in
        ``model.named_parameters()``), each the mean over all samples of the
        per-sample squared gradient (``batch_mean``: over all batches of the
        squared batch gradient).  The model is left as it was (it runs in
        eval mode; the temporary hooks are removed).
    """
    fisher, _ = diagonal_fisher_and_count(model, loader, kind, progress=progress)
    return fisher
