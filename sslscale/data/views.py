"""Augmentations, vectorised over a batch in numpy: images in, augmented views out. No Ray, no torch here.

An image batch is uint8 (N, H, W, C). A view's randomness is a function of (seed, epoch, sample id, view index)
only: every random number is a counter-based hash of those four numbers and a slot (`uniforms`), so a re-ordered,
re-split or resumed stream produces exactly the same views, and a batch costs a few array operations per
augmentation instead of a Python loop per image. `batch_views` makes the global views (view indices 0..n-1),
DINO's small local views (the next indices) and MAE's visible patches (the index after those). Ray Data calls it
on its CPU tasks (see stream.py).

The augmentations are SimCLR's, applied in its order: random resized crop (area fraction in [min, max] of the
image, aspect in [3/4, 4/3], 10 tries then the whole image), horizontal flip, colour jitter (brightness,
contrast and, on RGB, saturation, in a random order), grayscale, Gaussian blur (sigma 0.1-2.0 px at 224 px,
scaled with the view's side) and solarisation. The crop is resized with bilinear interpolation and no
antialiasing, as torchvision's tensor transforms do: prepare a corpus near the size it is viewed at (`data
prepare --image-size`), since shrinking a crop by more than ~1.5x aliases.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


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

    @classmethod
    def from_config(cls, cfg, size: int) -> "ViewSpec":
        """The spec of a run's global views: cfg's data.* strengths at side `size`."""
        d = cfg.data
        return cls(size=size, crop_min_scale=d.crop_min_scale, flip=d.flip, jitter=d.jitter,
                   jitter_prob=d.jitter_prob, grayscale=d.grayscale, blur=d.blur, solarize=d.solarize)


TRIES = 10  # random resized crop: draws of (area, aspect) before falling back to the whole image
# the columns of `uniforms` each augmentation reads, per view
_AREA, _ASPECT, _TOP, _LEFT = (slice(i * TRIES, (i + 1) * TRIES) for i in range(4))
_FLIP, _JITTER, _FACTORS, _ORDER, _GRAY, _BLUR, _SIGMA, _SOLARIZE = 40, 41, slice(42, 45), slice(45, 48), 48, 49, 50, 51
SLOTS = 52
CHUNK_VALUES = 2**17
_M1, _M2, _GOLDEN = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 that scatters every input bit over the output."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def uniforms(seed: int, epoch: int, ids: np.ndarray, view: int, n: int) -> np.ndarray:
    """(len(ids), n) float64 uniforms in [0, 1): slot j of sample id's view is a hash of (seed, epoch, id, view, j),
    the same however the ids are batched or ordered."""
    with np.errstate(over="ignore"):
        key = _mix(np.full(1, seed, np.uint64) + _GOLDEN)
        for part in (np.uint64(epoch), np.asarray(ids, np.int64).astype(np.uint64), np.uint64(view)):
            key = _mix(key + part * _GOLDEN + _GOLDEN)
        bits = _mix(key[:, None] + np.arange(1, n + 1, dtype=np.uint64) * _GOLDEN)
    return (bits >> np.uint64(11)) * 2.0**-53


def _crop_boxes(u: np.ndarray, h: int, w: int, min_scale: float, max_scale: float) -> np.ndarray:
    """(N, 4) float boxes (top, left, height, width): the first of TRIES draws that fits the image, else the whole."""
    area = h * w * (min_scale + (max_scale - min_scale) * u[:, _AREA])
    aspect = np.exp(np.log(3 / 4) + np.log(16 / 9) * u[:, _ASPECT])
    ch, cw = np.rint(np.sqrt(area / aspect)), np.rint(np.sqrt(area * aspect))
    fits = (ch > 0) & (ch <= h) & (cw > 0) & (cw <= w)
    first = np.argmax(fits, axis=1)[:, None]
    ch, cw = np.take_along_axis(ch, first, 1)[:, 0], np.take_along_axis(cw, first, 1)[:, 0]
    top = np.floor(np.take_along_axis(u[:, _TOP], first, 1)[:, 0] * (h - ch + 1))
    left = np.floor(np.take_along_axis(u[:, _LEFT], first, 1)[:, 0] * (w - cw + 1))
    boxes = np.stack([top, left, ch, cw], axis=1)
    boxes[~fits.any(axis=1)] = (0, 0, h, w)
    return boxes


def _taps(start: np.ndarray, length: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear sampling of `size` points across [start, start + length) (pixel centres, edges clamped): the two
    source indices (N, size) int64 and the weight of the second (N, size, 1, 1) float32."""
    pos = start[:, None] + (np.arange(size) + 0.5) * (length[:, None] / size) - 0.5
    pos = np.clip(pos, start[:, None], (start + length - 1)[:, None])
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, (start + length - 1).astype(np.int64)[:, None])
    return lo, hi, (pos - lo).astype(np.float32)[..., None, None]


def resized_crops(images: np.ndarray, boxes: np.ndarray, size: int, flip: np.ndarray) -> np.ndarray:
    """Each image's box (top, left, height, width) resized to size x size, mirrored where `flip`: float32
    (N, size, size, C) in [0, 255], TRANSPOSED (axis 1 is x, axis 2 is y): both passes then gather whole rows,
    and the augmentations after it treat both axes alike, so `augment` swaps them back once at the end."""
    n = np.arange(len(images))[:, None]
    y0, y1, wy = _taps(boxes[:, 0], boxes[:, 2], size)
    x0, x1, wx = _taps(boxes[:, 1], boxes[:, 3], size)
    x0, x1, wx = (np.where(flip[:, None, None, None] if a.ndim == 4 else flip[:, None], a[:, ::-1], a)
                  for a in (x0, x1, wx))
    rows = _lerp(images[n, y0].astype(np.float32), images[n, y1].astype(np.float32), wy)  # (N, size, W, C)
    cols = np.ascontiguousarray(rows.transpose(0, 2, 1, 3))  # (N, W, size, C)
    return _lerp(cols[n, x0], cols[n, x1], wx)  # (N, size x, size y, C)


def _lerp(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """a + (b - a) * w, in place in a and b (fresh arrays from a gather): no new pages for large batches."""
    b -= a
    b *= w
    a += b
    return a


def color_jitter(x: np.ndarray, u: np.ndarray, strength: float, p: float) -> np.ndarray:
    """Brightness, contrast and (RGB) saturation, each by a factor f in [1-s, 1+s], in a random order per image,
    on the images whose draw falls under p; x float32 (N, H, W, C), changed in place and returned. Each op moves
    an image away from an anchor by f: black (brightness), the image's mean (contrast), each pixel's luma
    (saturation)."""
    on = u[:, _JITTER] < p
    if strength <= 0 or not on.any():
        return x
    ops = 3 if x.shape[3] == 3 else 2
    low = max(0.0, 1 - strength)
    factors = (low + (1 + strength - low) * u[on, _FACTORS]).astype(np.float32)  # (n, 3)
    order = np.argsort(u[on, _ORDER][:, :ops], axis=1)  # order[:, k]: the op applied k-th
    y = x[on]
    for k in range(ops):
        f = factors[np.arange(len(y)), order[:, k]][:, None, None, None]
        for op in range(ops):
            sel = order[:, k] == op
            if sel.any():
                part, g = y[sel], f[sel]
                part *= g
                if op:
                    anchor = _ANCHORS[op](y[sel])
                    part += anchor * (1 - g)
                y[sel] = np.clip(part, 0, 255, out=part)
    x[on] = y
    return x


_ANCHORS = {1: lambda y: y.mean(axis=(1, 2, 3), keepdims=True), 2: lambda y: (y @ LUMA)[..., None]}


def _grayscale(x: np.ndarray, on: np.ndarray) -> np.ndarray:
    if x.shape[3] == 3 and on.any():
        x[on] = (x[on] @ LUMA)[..., None]
    return x


def gaussian_blur(x: np.ndarray, sigma: np.ndarray, radius: int) -> np.ndarray:
    """Blur image i with a Gaussian of sigma[i] pixels (0: unchanged), cut at 3 sigma[i] (at least 1 px),
    separably, edges reflected; in place. Every kernel spans the same 2 * radius + 1 taps (radius: at least
    3 sigma of any image the spec can draw), those beyond an image's own cut exactly 0: the same arithmetic
    whichever images share a chunk, so a view does not depend on its neighbours."""
    on = sigma > 0
    if not on.any():
        return x
    s = sigma[on].astype(np.float32)[:, None]
    own = np.maximum(1, np.ceil(3 * s))  # (n, 1) each image's radius
    offsets = np.arange(-radius, radius + 1, dtype=np.float32)
    taps = np.where(np.abs(offsets) <= own, np.exp(-0.5 * (offsets / s) ** 2), 0.0).astype(np.float32)
    taps /= taps.sum(axis=1, keepdims=True)  # (n, 2r+1)
    y = x[on]
    for axis in (1, 2):
        pad = [(0, 0)] * 4
        pad[axis] = (radius, radius)
        padded = np.pad(y, pad, mode="reflect" if y.shape[axis] > radius else "edge")
        length, at = y.shape[axis], [slice(None)] * 4
        y = np.zeros_like(y)
        for k in range(2 * radius + 1):
            at[axis] = slice(k, k + length)
            y += taps[:, k, None, None, None] * padded[tuple(at)]
    x[on] = y
    return x


def augment(images: np.ndarray, u: np.ndarray, spec: ViewSpec) -> np.ndarray:
    """One view of each image: images uint8 (N, H, W, C), u its `uniforms` (N, SLOTS) -> uint8 (N, C, S, S).
    Images go through in chunks of about CHUNK_VALUES floats, so the intermediates stay in the CPU's cache: a
    few hundred 28 px images at once, one 224 px image at a time (1.9x faster than whole batches there)."""
    n, c = len(images), images.shape[3]
    out = np.empty((n, c, spec.size, spec.size), np.uint8)
    step = max(1, CHUNK_VALUES // (spec.size * spec.size * c))
    for i in range(0, n, step):
        out[i : i + step] = _augment(images[i : i + step], u[i : i + step], spec)
    return out


def _augment(images: np.ndarray, u: np.ndarray, spec: ViewSpec) -> np.ndarray:
    boxes = _crop_boxes(u, images.shape[1], images.shape[2], spec.crop_min_scale, spec.crop_max_scale)
    x = resized_crops(images, boxes, spec.size, u[:, _FLIP] < spec.flip)
    x = color_jitter(x, u, spec.jitter, spec.jitter_prob)
    x = _grayscale(x, u[:, _GRAY] < spec.grayscale)
    sigma = np.where(u[:, _BLUR] < spec.blur, (0.1 + 1.9 * u[:, _SIGMA]) * spec.size / 224, 0.0)
    x = gaussian_blur(x, sigma, radius=max(1, int(np.ceil(3 * 2.0 * spec.size / 224))))
    x = np.rint(x, out=x).astype(np.uint8)
    solar = (u[:, _SOLARIZE] < spec.solarize)[:, None, None, None] & (x >= 128)
    x = np.where(solar, 255 - x, x)
    return np.ascontiguousarray(x.transpose(0, 3, 2, 1))  # (N, x, y, C) -> (N, C, y, x)


def local_spec(spec: ViewSpec, local_size: int | None, local_scale: tuple[float, float]) -> ViewSpec:
    """The spec of DINO's local views: size local_size (default half of spec.size), crop area in local_scale."""
    return replace(spec, size=local_size or spec.size // 2, crop_min_scale=local_scale[0],
                   crop_max_scale=local_scale[1])


def patch_masks(u: np.ndarray, ratio: float) -> np.ndarray:
    """MAE random masking from `uniforms` (N, num_patches): each row's sorted indices (int64) of the
    round(num_patches * (1 - ratio)) visible patches. The boolean mask (True = hidden) of a row is
    `~np.isin(np.arange(num_patches), keep)`."""
    n_keep = int(round(u.shape[1] * (1 - ratio)))
    return np.sort(np.argsort(u, axis=1, kind="stable")[:, :n_keep], axis=1).astype(np.int64)


KINDS = ("pixels", "ids")  # a batch field: uint8 images (N, C, H, W), or integer ids (patch, token, class)


def batch_views(images: np.ndarray, ids: np.ndarray, *, seed: int, epoch: int, spec: ViewSpec,
                n_views: int = 2, n_local: int = 0, local_size: int | None = None,
                local_scale: tuple[float, float] = (0.05, 0.3), patch_mask_ratio: float = 0.0,
                num_patches: int = 0, per_view: tuple[dict, ...] = ()) -> dict[str, np.ndarray]:
    """Views for a batch: images (N, H, W, C) uint8, ids (N,) -> {"view_0": (N, C, S, S) uint8, ...,
    "local_0": (N, C, s, s) uint8, ...} (local views: see local_spec), plus "keep": (N, L') int64 visible patch
    indices (see patch_masks; view index n_views + n_local) when patch_mask_ratio > 0 and num_patches > 0. The
    options are modalities.image.ImageLayout's.
    per_view[v], where given, overrides ViewSpec fields for view v (global views first, then local ones): BYOL's
    blur {"blur": 1.0} on view 0 and {"blur": 0.1, "solarize": 0.2} on view 1."""
    out = {}
    names = [f"view_{v}" for v in range(n_views)] + [f"local_{v}" for v in range(n_local)]
    for v, name in enumerate(names):
        spec_v = spec if v < n_views else local_spec(spec, local_size, local_scale)
        spec_v = replace(spec_v, **per_view[v]) if v < len(per_view) else spec_v
        out[name] = augment(images, uniforms(seed, epoch, ids, v, SLOTS), spec_v)
    if patch_mask_ratio > 0 and num_patches > 0:
        out["keep"] = patch_masks(uniforms(seed, epoch, ids, n_views + n_local, num_patches), patch_mask_ratio)
    return out
