"""Augmentations as plain numpy/PIL functions: one image in, augmented views out. No Ray, no torch here.

An image is a uint8 array (H, W, C). A view's randomness is a function of (seed, epoch, sample id, view index)
only, so a re-ordered, re-split or resumed stream produces exactly the same views. Ray Data calls `batch_views`
on its CPU tasks (see stream.py); tests call the functions directly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter


@dataclass(frozen=True)
class ViewSpec:
    """Augmentation strengths (the data.* config keys of the same names)."""

    size: int
    crop_min_scale: float = 0.3
    flip: float = 0.5
    jitter: float = 0.4
    jitter_prob: float = 0.8
    grayscale: float = 0.2
    blur: float = 0.0


def view_rng(seed: int, epoch: int, sample_id: int, view: int) -> np.random.Generator:
    """The generator for one view: the same four numbers always give the same stream."""
    return np.random.default_rng([seed, epoch, sample_id, view])


def random_resized_crop(img: np.ndarray, rng: np.random.Generator, size: int, min_scale: float) -> np.ndarray:
    """Crop a random area (fraction in [min_scale, 1], aspect in [3/4, 4/3]) and resize to size x size."""
    h, w = img.shape[:2]
    for _ in range(10):
        area = h * w * rng.uniform(min_scale, 1.0)
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


def augment(img: np.ndarray, rng: np.random.Generator, spec: ViewSpec) -> np.ndarray:
    """One SimCLR-style view of a (H, W, C) uint8 image, returned as (C, size, size) uint8."""
    x = random_resized_crop(img, rng, spec.size, spec.crop_min_scale)
    x = hflip(x, rng, spec.flip)
    x = color_jitter(x, rng, spec.jitter, spec.jitter_prob)
    x = random_grayscale(x, rng, spec.grayscale)
    x = gaussian_blur(x, rng, spec.blur)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def batch_views(images: np.ndarray, ids: np.ndarray, *, seed: int, epoch: int, spec: ViewSpec,
                n_views: int = 2) -> dict[str, np.ndarray]:
    """Views for a batch: images (N, H, W, C) uint8, ids (N,) -> {"view_0": (N, C, S, S) uint8, ...}."""
    out = {f"view_{v}": np.empty((len(ids), images.shape[3], spec.size, spec.size), np.uint8) for v in range(n_views)}
    for i, (img, sid) in enumerate(zip(images, ids)):
        for v in range(n_views):
            out[f"view_{v}"][i] = augment(img, view_rng(seed, epoch, int(sid), v), spec)
    return out
