"""Images of pool samples for W&B tables and grids: undo the dataset's normalisation, enlarge small images."""

from __future__ import annotations

import numpy as np
import torch

#: small images (8x8 digits, 28x28 MNIST) are enlarged (nearest neighbour) to at least this side in pixels
MIN_SIDE = 64


def to_uint8(x: torch.Tensor, mean=None, std=None) -> np.ndarray:
    """A normalised (C, H, W) image as uint8 (H, W) or (H, W, 3): ``x * std + mean`` when the dataset's
    normalisation is known, else stretched to its own min..max."""
    x = x.detach().float().cpu()
    if mean is not None and std is not None:
        x = x * torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1) + torch.as_tensor(mean).view(-1, 1, 1)
    else:
        lo, hi = x.min(), x.max()
        x = (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    scale = max(1, -(-MIN_SIDE // max(x.shape[-2:])))  # ceil
    if scale > 1:
        x = x.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    return x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()


def sample_image(dataset, index: int) -> tuple[np.ndarray, int]:
    """Pool sample ``index`` of ``dataset`` (``datamodule.pool.train``) as a uint8 image, with its label."""
    x, label = dataset[int(index)]
    return to_uint8(x, getattr(dataset, "mean", None), getattr(dataset, "std", None)), int(label)


def pair_grid(pairs: list[tuple[np.ndarray, np.ndarray]], per_row: int = 4, pad: int = 4) -> np.ndarray:
    """One image of ``(left, right)`` pairs side by side, ``per_row`` pairs a row, on a white background
    (a wider white gap between pairs than inside one)."""
    if not pairs:
        raise ValueError("an image grid needs at least one pair.")
    rgb = [tuple(_rgb(a) for a in pair) for pair in pairs]
    h = max(a.shape[0] for pair in rgb for a in pair)
    w = max(a.shape[1] for pair in rgb for a in pair)
    cols = min(per_row, len(rgb))
    rows = -(-len(rgb) // cols)
    cell_w = 2 * w + pad + 3 * pad  # pair + inner gap + gap to the next pair
    grid = np.full((rows * (h + pad) + pad, cols * cell_w + pad, 3), 255, dtype=np.uint8)
    for i, (left, right) in enumerate(rgb):
        top, x0 = pad + (i // cols) * (h + pad), 2 * pad + (i % cols) * cell_w
        grid[top : top + left.shape[0], x0 : x0 + left.shape[1]] = left
        x1 = x0 + w + pad
        grid[top : top + right.shape[0], x1 : x1 + right.shape[1]] = right
    return grid


def _rgb(a: np.ndarray) -> np.ndarray:
    return np.repeat(a[..., None], 3, axis=-1) if a.ndim == 2 else a
