"""Augmentations as plain numpy/PIL functions: one image in, augmented views out. No Ray, no torch here.

An image is a uint8 array (H, W, C). A view's randomness is a function of (seed, epoch, sample id, view index)
only, so a re-ordered, re-split or resumed stream produces exactly the same views. `multi_crop` makes the global
views (indices 0..n-1) and DINO's small local views (the next indices); `patch_mask` draws MAE's visible patches
(the index after those). Ray Data calls `batch_views` on its CPU tasks (see stream.py); tests call the functions
directly.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageFilter


@dataclass(frozen=True)
class ViewSpec:
    """Augmentation strengths (the data.* config keys of the same names)."""

    size: int
    crop_min_scale: float = 0.3
    crop_max_scale: float = 1.0  # local crops use a smaller range, e.g. [0.05, 0.3]
    flip: float = 0.5
    jitter: float = 0.4
    jitter_prob: float = 0.8
    grayscale: float = 0.2
    blur: float = 0.0
    solarize: float = 0.0  # probability of inverting the pixels >= 128


def view_rng(seed: int, epoch: int, sample_id: int, view: int) -> np.random.Generator:
    """The generator for one view: the same four numbers always give the same stream."""
    return np.random.default_rng([seed, epoch, sample_id, view])


def random_resized_crop(img: np.ndarray, rng: np.random.Generator, size: int, min_scale: float,
                        max_scale: float = 1.0) -> np.ndarray:
    """Crop a random area (fraction in [min_scale, max_scale], aspect in [3/4, 4/3]) and resize to size x size."""
    h, w = img.shape[:2]
    for _ in range(10):
        area = h * w * rng.uniform(min_scale, max_scale)
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        ch, cw = int(round(np.sqrt(area / aspect))), int(round(np.sqrt(area * aspect)))
        if 0 < ch <= h and 0 < cw <= w:
            top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            break
    else:
        ch, cw, top, left = h, w, 0, 0
    crop = _to_pil(img[top : top + ch, left : left + cw])
    out = np.asarray(crop.resize((size, size), Image.BILINEAR))
    return out.reshape(size, size, img.shape[2])


def _to_pil(img: np.ndarray) -> Image.Image:
    return Image.fromarray(img[..., 0] if img.shape[2] == 1 else img)


def hflip(img: np.ndarray, rng: np.random.Generator, p: float) -> np.ndarray:
    return img[:, ::-1] if rng.random() < p else img


def color_jitter(img: np.ndarray, rng: np.random.Generator, strength: float, p: float) -> np.ndarray:
    """Brightness and contrast (and saturation on RGB) scaled by factors in [1-s, 1+s], in random order."""
    if strength <= 0 or rng.random() >= p:
        return img
    x = img.astype(np.float32)
    ops = ["brightness", "contrast"] + (["saturation"] if img.shape[2] == 3 else [])
    for op in rng.permutation(ops):
        factor = rng.uniform(max(0.0, 1 - strength), 1 + strength)
        if op == "brightness":
            x = x * factor
        elif op == "contrast":
            x = (x - x.mean()) * factor + x.mean()
        else:
            gray = _luma(x)
            x = (x - gray) * factor + gray
        x = np.clip(x, 0, 255)
    return x.astype(np.uint8)


def _luma(x: np.ndarray) -> np.ndarray:
    return (x @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]


def random_grayscale(img: np.ndarray, rng: np.random.Generator, p: float) -> np.ndarray:
    if img.shape[2] != 3 or rng.random() >= p:
        return img
    return np.repeat(_luma(img.astype(np.float32)), 3, axis=2).astype(np.uint8)


def gaussian_blur(img: np.ndarray, rng: np.random.Generator, p: float) -> np.ndarray:
    """Blur with sigma in [0.1, 2.0] pixels scaled to the image (SimCLR uses ~10% of the side as kernel)."""
    if rng.random() >= p:
        return img
    sigma = rng.uniform(0.1, 2.0) * img.shape[0] / 224 * 10
    return np.asarray(_to_pil(img).filter(ImageFilter.GaussianBlur(sigma))).reshape(img.shape)


def solarize(img: np.ndarray, rng: np.random.Generator, p: float) -> np.ndarray:
    """With probability p, invert every pixel value >= 128 (BYOL, DINO)."""
    if rng.random() >= p:
        return img
    return np.where(img >= 128, 255 - img, img).astype(np.uint8)


def augment(img: np.ndarray, rng: np.random.Generator, spec: ViewSpec) -> np.ndarray:
    """One SimCLR-style view of a (H, W, C) uint8 image, returned as (C, size, size) uint8."""
    x = random_resized_crop(img, rng, spec.size, spec.crop_min_scale, spec.crop_max_scale)
    x = hflip(x, rng, spec.flip)
    x = color_jitter(x, rng, spec.jitter, spec.jitter_prob)
    x = random_grayscale(x, rng, spec.grayscale)
    x = gaussian_blur(x, rng, spec.blur)
    x = solarize(x, rng, spec.solarize)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def local_spec(spec: ViewSpec, local_size: int | None, local_scale: tuple[float, float]) -> ViewSpec:
    """The spec of DINO's local views: size local_size (default half of spec.size), crop area in local_scale."""
    return replace(spec, size=local_size or spec.size // 2, crop_min_scale=local_scale[0],
                   crop_max_scale=local_scale[1])


def multi_crop(img: np.ndarray, seed: int, epoch: int, sample_id: int, spec: ViewSpec, n_global: int = 2,
               n_local: int = 0, local_size: int | None = None,
               local_scale: tuple[float, float] = (0.05, 0.3)) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """DINO multi-crop: n_global views at spec.size (crop area in [crop_min_scale, crop_max_scale]) and n_local
    views (see local_spec), each (C, S, S) uint8. Global view v uses view index v, local view j n_global + j."""
    local = local_spec(spec, local_size, local_scale)
    globals_ = [augment(img, view_rng(seed, epoch, sample_id, v), spec) for v in range(n_global)]
    locals_ = [augment(img, view_rng(seed, epoch, sample_id, n_global + j), local) for j in range(n_local)]
    return globals_, locals_


def patch_mask(rng: np.random.Generator, num_patches: int, ratio: float) -> np.ndarray:
    """MAE random masking: the sorted indices (int64) of the round(num_patches * (1 - ratio)) visible patches.
    The boolean mask (True = hidden) is `~np.isin(np.arange(num_patches), keep)`."""
    n_keep = int(round(num_patches * (1 - ratio)))
    return np.sort(rng.permutation(num_patches)[:n_keep]).astype(np.int64)


def batch_views(images: np.ndarray, ids: np.ndarray, *, seed: int, epoch: int, spec: ViewSpec,
                n_views: int = 2, n_local: int = 0, local_size: int | None = None,
                local_scale: tuple[float, float] = (0.05, 0.3), mask_ratio: float = 0.0,
                num_patches: int = 0) -> dict[str, np.ndarray]:
    """Views for a batch: images (N, H, W, C) uint8, ids (N,) -> {"view_0": (N, C, S, S) uint8, ...,
    "local_0": (N, C, s, s) uint8, ...} (see multi_crop), plus "keep": (N, L') int64 visible patch indices
    (see patch_mask; view index n_views + n_local) when mask_ratio > 0 and num_patches > 0."""
    n, c, small = len(ids), images.shape[3], local_spec(spec, local_size, local_scale).size
    names = [f"view_{v}" for v in range(n_views)] + [f"local_{j}" for j in range(n_local)]
    sizes = [spec.size] * n_views + [small] * n_local
    out = {name: np.empty((n, c, size, size), np.uint8) for name, size in zip(names, sizes)}
    masked = mask_ratio > 0 and num_patches > 0
    if masked:
        out["keep"] = np.empty((n, int(round(num_patches * (1 - mask_ratio)))), np.int64)
    for i, (img, sid) in enumerate(zip(images, ids)):
        globals_, locals_ = multi_crop(img, seed, epoch, int(sid), spec, n_views, n_local, local_size, local_scale)
        for name, view in zip(names, globals_ + locals_):
            out[name][i] = view
        if masked:
            out["keep"][i] = patch_mask(view_rng(seed, epoch, int(sid), n_views + n_local), num_patches, mask_ratio)
    return out
