"""The stepwise spectrum a run logs (health.spectrum): the encoder's features of the run's fixed probe set
(data/probe.py) on health steps, measured inside the training loop (train.py) on rank 0, or on every rank under
ZeRO-3, whose forward is a collective. A monitor: a probe set that cannot be read turns it off in one line."""
from __future__ import annotations

import torch

from sslscale import dist
from sslscale.config import Config
from sslscale.data import corpus
from sslscale.data.modalities import data_field
from sslscale.data.probe import probe_images
from sslscale.training.engine import Engine
from sslscale.training.health import spectrum, spectrum_metrics

PROBE_CHUNK = 256  # probe images per encoder forward


class Spectrum:
    """The stepwise spectrum (health.spectrum, train.spectrum_k eigenvalues) of the encoder's features of the run's
    fixed probe set (probe.py, train.probe_samples images), measured on health steps that were not skipped. Rank 0
    loads the set once and measures; under ZeRO-3, whose forward gathers the partitioned parameters in a
    collective, every rank loads it and joins the forward. A probe set that cannot be read turns the spectrum off
    with one line: it is a monitor, and the stream reports bad data its own way. `kind`: the encoder's modality,
    the data field of the corpus the probe set is read from."""

    def __init__(self, cfg: Config, where: dict | None, rank: int, kind: str):
        self.cfg, self.rank = cfg, rank
        self.zero3 = cfg.engine.zero_stage == 3
        wanted = bool(cfg.train.spectrum_k and where) and (rank == 0 or self.zero3)
        self.images = load_probe(cfg, where, kind) if wanted else None  # uint8 (n, C, H, W), or token ids (n, L)
        if self.zero3 and wanted:  # every rank joins the forward, or none does
            loaded = dist.all_reduce_sum(torch.tensor([float(self.images is not None)]))
            self.images = self.images if int(loaded[0]) == dist.world_size() else None

    def measure(self, engine: Engine, step: int, skipped: bool) -> dict:
        """spectrum_metrics of this step's encoder on a health step (on rank 0), else {}."""
        if self.images is None or skipped or step % self.cfg.train.health_every:
            return {}
        emb = embed(engine, self.images)
        return spectrum_metrics(spectrum(emb, self.cfg.train.spectrum_k)) if self.rank == 0 else {}


def load_probe(cfg: Config, where: dict, kind: str) -> torch.Tensor | None:
    """The probe set as the engine takes it (the corpus's data field of the encoder's `kind`, Modality.to_engine:
    images uint8 (n, C, H, W), token ids (n, L)), or None (said in one line) when it cannot be read."""
    try:
        samples = probe_images(where["corpus"], where["split"], cfg.data.seed, cfg.train.probe_samples, kind)
        field = data_field(corpus.load_manifest(where["corpus"]), where["corpus"], kind)
    except Exception as e:  # noqa: BLE001 - a monitor: storage errors too must not stop the training
        print(f"the embedding spectrum is off for this run: its probe set cannot be read ({e})", flush=True)
        return None
    return torch.from_numpy(field.to_engine(samples))


@torch.no_grad()
def embed(engine: Engine, images: torch.Tensor) -> torch.Tensor:
    """The encoder's features (n, D), float32, of uint8 images (n, C, H, W) (or token ids (n, L)) converted as the
    engine converts the method's first input (Engine.to_device: views, or tokens), in eval mode and chunks of
    PROBE_CHUNK; the encoder's mode is restored after."""
    encoder = engine.method.encoder
    field = next(iter(engine.inputs))  # view_0, or a text method's tokens
    was_training = encoder.training
    encoder.eval()
    try:
        return torch.cat([encoder(engine.to_device({field: images[i : i + PROBE_CHUNK]})[field]).float()
                          for i in range(0, len(images), PROBE_CHUNK)])
    finally:
        encoder.train(was_training)
