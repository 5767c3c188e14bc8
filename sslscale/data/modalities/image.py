"""Images: a field of kind "image", PNG members of one shape (H, W, C), uint8; views are views.batch_views', the
encoders take float (N, C, H, W) in [0, 1], and the no-learning baseline is the raw pixels."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image as PILImage

from sslscale.errors import SslscaleError, reason
from dataclasses import dataclass

from sslscale.data.modalities.base import Layout, Modality
from sslscale.data.views import ViewSpec, batch_views


def decode_image(png_bytes: bytes) -> np.ndarray:
    """PNG (or any PIL-readable) bytes -> uint8 array (H, W, C), C=1 for grayscale."""
    try:
        with PILImage.open(io.BytesIO(png_bytes)) as im:
            arr = np.asarray(im if im.mode in ("L", "RGB") else im.convert("RGB"), dtype=np.uint8)
    except Exception as e:  # PIL raises many exception types for bad data
        raise SslscaleError(f"cannot decode image bytes: {reason(e)}; the corpus is damaged: "
                            "check it with verify_shards and re-run prepare") from None
    return arr[..., None] if arr.ndim == 2 else arr


@dataclass(frozen=True)
class ImageLayout(Layout):
    """The views a method asks of an image field (views.batch_views' options): `n_views` global views, `n_local`
    small local ones of side `local_size` (None: half the image) cropping an area in `local_scale` (DINO),
    `per_view` ViewSpec overrides per global view (BYOL's asymmetric blur), and with `patch_mask_ratio` > 0 the ids
    of the visible patches among `num_patches` (MAE)."""

    n_views: int = 2
    n_local: int = 0
    local_size: int | None = None
    local_scale: tuple[float, float] = (0.05, 0.3)
    patch_mask_ratio: float = 0.0
    num_patches: int = 0
    per_view: tuple[dict, ...] = ()

    def fields(self) -> dict[str, str]:
        """view_0.., local_0.. (uint8 pixels), then `keep` (visible patch ids) when patches are masked."""
        return {**{f"view_{v}": "pixels" for v in range(self.n_views)},
                **{f"local_{v}": "pixels" for v in range(self.n_local)},
                **({"keep": "ids"} if self.patch_mask_ratio > 0 and self.num_patches > 0 else {})}


class Image(Modality):
    """A field of images of the manifest's `shape` [H, W, C]."""

    kind = "image"
    layout = ImageLayout
    noun = "images"
    encoding = "png"
    labelled_field = "view_0"
    labelled_input = "pixels"

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.entry["shape"])

    @property
    def size(self) -> int:
        return self.shape[0]

    def describe(self) -> str:
        return f"a {self.shape[2]}-channel image"

    def encode(self, sample: np.ndarray) -> bytes:
        """uint8 (H, W, C) -> PNG bytes (grey for one channel)."""
        buf = io.BytesIO()
        PILImage.fromarray(sample[..., 0] if sample.shape[-1] == 1 else sample).save(buf, format="PNG")
        return buf.getvalue()

    def decode(self, data: bytes) -> np.ndarray:
        image = decode_image(data)
        if image.shape[2] != self.shape[2]:  # every image of a prepared corpus has its shape
            raise SslscaleError(f"an image of shape {image.shape} in a corpus of {self.shape} images")
        return image

    def blank(self) -> np.ndarray:
        return np.zeros(self.shape, np.uint8)

    def view_options(self, cfg) -> dict:
        return {"spec": ViewSpec.from_config(cfg, self.size)}

    def views(self, samples, ids, *, seed, epoch, layout: ImageLayout,
              spec: ViewSpec | None = None) -> dict[str, np.ndarray]:
        """views.batch_views' fields for `layout` (spec: the run's strengths; none: the defaults)."""
        return batch_views(samples, ids, seed=seed, epoch=epoch, spec=spec or ViewSpec(size=self.size),
                           **vars(layout))

    def encoder_input(self) -> dict:
        return {"in_channels": self.shape[2], "image_size": self.size}

    def check_model(self, model_cfg, where: str) -> None:
        """One line when the run's model cannot take these images."""
        h, w, _ = self.shape
        if h != w:
            raise SslscaleError(f"corpus {where} has {h}x{w} images; encoders take square images: re-prepare it")
        if model_cfg.encoder == "vit" and h % model_cfg.patch_size:
            raise SslscaleError(f"model.patch_size={model_cfg.patch_size} does not divide the corpus' {h}-pixel "
                                f"images; pick a divisor of {h}")

    def to_encoder(self, batch: np.ndarray):
        import torch

        return torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255)

    def to_engine(self, batch: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(batch).transpose(0, 3, 1, 2))

    def check_fits(self, encoder, batch: np.ndarray, where: str = "target") -> None:
        """One line when uint8 images (N, H, W, C) are not the size and channels the encoder takes."""
        if batch.shape[3] != encoder.in_channels or batch.shape[1] != encoder.image_size:
            raise SslscaleError(f"{where} images are {batch.shape[1]}x{batch.shape[2]}x{batch.shape[3]} but the "
                                f"encoder takes {encoder.image_size}x{encoder.image_size}x{encoder.in_channels}; "
                                "pick a matching target")

    def check_target(self, target: Modality, target_dir: str, corpus_dir: str | None, where: str) -> None:
        if target.shape != (self.size, self.size, self.shape[2]):
            (h, w, c), side, channels = target.shape, self.size, self.shape[2]
            raise SslscaleError(f"transfer.target {where} has {h}x{w}x{c} images but the encoder takes the "
                                f"corpus' {side}x{side}x{channels}: pick a target of that size (or "
                                "transfer.enabled=false)")

    def baseline(self, train_x: np.ndarray, test_x: np.ndarray):
        import torch

        def pixels(images: np.ndarray):
            return torch.from_numpy(images.reshape(len(images), -1)).float().div_(255)

        return "pixels", pixels(train_x), pixels(test_x)

    def labelled(self, samples, view_ids, *, seed: int, views: dict) -> dict[str, np.ndarray]:
        spec = ViewSpec(size=self.size, **views)
        return {"view_0": batch_views(samples, view_ids, seed=seed, epoch=0, spec=spec, n_views=1)["view_0"]}
