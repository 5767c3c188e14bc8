"""The fine-tuning protocol and its supervised from-scratch baseline, through the training engine.

`finetune`: a copy of the pretrained encoder plus a linear head, trained end to end with cross-entropy on a labelled
train subset. `scratch`: the same architecture from random initialisation, with the same steps, batch and
augmentations: the number pretraining must beat. Both run as an engine.Engine (DeepSpeed, the run's ZeRO stage and
precision) in this process, on one view per image (views.py: a random resized crop and a flip, a pure function of
(seed, epoch, sample id); a text sample's token ids as they are), and are scored once on the whole test split.

Hyperparameters are chosen on a seeded, stratified validation slice of the train subset (transfer.val_fraction),
never on the test split: the encoder's learning rate as a multiple of the head's (transfer.finetune_encoder_lr_scales),
layer-wise decay for ViT and text encoders (transfer.finetune_layer_decays, MAE's recipe: block i learns at decay^(depth-i)
of the rate of the last layer) and the from-scratch learning rate (transfer.scratch_lrs). The candidate with the best
validation accuracy is the model scored on the test split.
"""
from __future__ import annotations

import copy
import json
import re

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sslscale.checks import list_items

from sslscale.config import Config
from sslscale.data.modalities import Modality
from sslscale.data.splits import stratified_pick
from sslscale.encoders import from_spec
from sslscale.errors import SslscaleError
from sslscale.methods.base import Method
from sslscale.training.engine import Engine

VIEWS = {"crop_min_scale": 0.5, "flip": 0.5, "jitter": 0.0, "jitter_prob": 0.0, "grayscale": 0.0}  # crop + flip
EVAL_BATCH = 512


class Classifier(Method):
    """An encoder and a linear head trained with cross-entropy on batches of a data field's labelled views
    (Modality.labelled); `lr_scale(name)` gives each parameter's learning rate as a multiple of optim.lr
    (optim.param_groups reads it)."""

    def __init__(self, encoder: nn.Module, classes: int, cfg, data: Modality, encoder_scale: float = 1.0,
                 layer_decay: float = 1.0):
        super().__init__(encoder, cfg)
        self.head = nn.Linear(encoder.feature_dim, classes)
        self.encoder_scale, self.layer_decay = encoder_scale, layer_decay
        self.data, self.field = data, data.labelled_field

    def lr_scale(self, name: str) -> float:
        if not name.startswith("encoder."):
            return 1.0
        depth = getattr(self.encoder, "depth", None)  # ViTs have blocks to decay over; ResNets one encoder scale
        if depth is None or self.layer_decay == 1.0:
            return self.encoder_scale
        block = re.match(r"encoder\.blocks\.(\d+)\.", name)
        layer = int(block.group(1)) + 1 if block else (0 if re.match(r"encoder\.(patch_embed|cls_token|pos|embed)\b",
                                                                     name) else depth + 1)
        return self.encoder_scale * self.layer_decay ** (depth + 1 - layer)

    def inputs(self, cfg, sizes: dict[str, int]) -> dict[str, str]:
        """The data field's labelled view (one view of an image, a passage's token ids), and its class."""
        return {self.field: self.data.labelled_input, "label": "ids"}

    def forward(self, batch: dict, step: int = 0) -> dict:
        h = self.encoder(batch[self.field])
        logits = self.head(h)
        loss = F.cross_entropy(logits.float(), batch["label"].to(logits.device))
        return {"loss": loss, "embeddings": h.detach()}


def engine_config(base: Config, tcfg, lr: float) -> Config:
    """The engine settings of `base` (ZeRO stage, precision, device) with the protocol's own optimisation."""
    steps = tcfg.finetune_steps
    return base.override([f"data.batch_size={tcfg.finetune_batch_size}", f"train.steps={steps}",
                          f"train.workers={tcfg.finetune_workers}",
                          "engine.grad_accum=1", "optim.name=adamw", f"optim.lr={lr}", "optim.weight_decay=0.05",
                          "optim.weight_decay_end=-1", f"optim.warmup_steps={max(1, steps // 10)}"])


def _order(idx: np.ndarray, images: int, batch: int, steps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(the steps x batch sample ids training reads, in order; each one's view id): idx in a seeded order that is
    reshuffled every epoch (a subset smaller than a batch repeats within it). A sample's view is drawn for its own
    epoch (view id epoch x images + sample id), so repeats in a batch differ."""
    epochs = -(-steps * batch // len(idx))
    order = np.concatenate([np.random.default_rng([seed, e]).permutation(idx) for e in range(epochs)])
    epoch = np.repeat(np.arange(epochs), len(idx))
    return order[:steps * batch], (epoch * images + order)[:steps * batch]


def _batches(field: Modality, images: np.ndarray, labels: np.ndarray, idx: np.ndarray, batch: int, steps: int,
             seed: int):
    """`steps` batches of `batch` samples of images[idx] in _order: `field`'s labelled views (Modality.labelled:
    {"view_0": uint8 (B, C, S, S)}, text {"tokens": int64 (B, L)}) and "label": int64 (B,)."""
    order, view_ids = _order(idx, len(images), batch, steps, seed)
    for i in range(0, len(order), batch):
        take = order[i:i + batch]
        yield {**field.labelled(images[take], view_ids[i:i + batch], seed=seed, views=VIEWS),
               "label": torch.as_tensor(labels[take])}


@torch.no_grad()
def accuracy(engine: Engine, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 of the engine's classifier on whole, unaugmented images (or token ids), in eval mode."""
    model, correct = engine.method, 0
    model.eval()
    for i in range(0, len(images), EVAL_BATCH):
        x = model.data.to_engine(images[i:i + EVAL_BATCH])
        predicted = model.head(model.encoder(engine.to_device({model.field: x})[model.field])).argmax(1)
        correct += int((predicted.cpu().numpy() == labels[i:i + EVAL_BATCH]).sum())
    model.train()
    return correct / len(images)


def train(encoder: nn.Module, classes: int, seed: int, batches, base: Config, tcfg, *, field: Modality, lr: float,
          encoder_scale: float = 1.0, layer_decay: float = 1.0) -> Engine:
    """Train a Classifier on `encoder` (changed in place: pass a copy) over `batches` (_batches' kind) of `field`."""
    cfg = engine_config(base, tcfg, lr)
    torch.manual_seed(seed)  # the head's initial weights
    engine = Engine(Classifier(encoder, classes, cfg, field, encoder_scale, layer_decay), cfg)
    done = 0
    for batch in batches:
        engine.train_step([batch], log=False)
        done += 1
    if done != tcfg.finetune_steps:  # a stream that ran dry (or over) must not pass for a trained model
        raise SslscaleError(f"fine-tuning got {done} batches for transfer.finetune_steps={tcfg.finetune_steps}: "
                            "its labelled stream is broken; run with --debug and report it")
    return engine


def _split(labels: np.ndarray, idx: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices: a seeded stratified validation slice of `fraction` of idx, at least one per
    class that has two or more samples (a class with one sample stays in train)."""
    sub = labels[idx]
    counts = np.bincount(sub)
    val_counts = np.where(counts >= 2, np.clip(np.round(fraction * counts), 1, counts - 1), 0).astype(np.int64)
    val = idx[stratified_pick(sub, val_counts, seed + 1)]
    return np.setdiff1d(idx, val), val


def _candidates(tcfg, encoder: nn.Module | None) -> list[dict]:
    """The hyperparameters tried: fine-tuning's encoder LR scales x layer decays (ViT and text encoders: a ResNet has no blocks
    to decay over), from scratch (encoder None) its LRs."""
    floats = lambda text: [float(v) for v in list_items(text)]  # noqa: E731
    if encoder is None:
        return [{"lr": lr} for lr in floats(tcfg.scratch_lrs)]
    decays = floats(tcfg.finetune_layer_decays) if hasattr(encoder, "depth") else [1.0]
    return [{"lr": tcfg.finetune_lr, "encoder_scale": s, "layer_decay": d}
            for s in floats(tcfg.finetune_encoder_lr_scales) for d in decays]


def top1(encoder: nn.Module | None, data: dict, idx: np.ndarray, base: Config, tcfg, spec: dict) -> tuple[float, dict]:
    """(test top-1, the chosen hyperparameters) of fine-tuning `encoder` (copied, not changed), or of training
    `spec`'s architecture from scratch when encoder is None, on data's train images[idx]. With more than one
    candidate, each trains on idx less the validation slice and the best on it is the model scored (so it saw
    1 - transfer.val_fraction of the labels); with one, it trains on all of idx. The test split is scored once.
    In this process, or with transfer.finetune_workers > 1 on that many Ray Train workers (_on_workers)."""
    (images, labels), seed = data["train"], data["seed"]
    labels = np.asarray(labels)
    candidates = _candidates(tcfg, encoder)
    fit_idx, val_idx = _split(labels, idx, tcfg.val_fraction, seed) if len(candidates) > 1 else (idx, idx[:0])
    if len(candidates) > 1 and not len(val_idx):
        print(f"no validation slice: every class of this subset has one sample; taking the first of "
              f"{len(candidates)} candidates", flush=True)
        candidates = candidates[:1]
    job = {"encoder": encoder, "spec": spec, "classes": data["classes"], "seed": seed, "candidates": candidates,
           "field": data["field"],
           "tcfg": tcfg, "val": (images[val_idx], labels[val_idx]),
           "test": (data["test"][0], np.asarray(data["test"][1]))}
    if tcfg.finetune_workers > 1:
        top, chosen = _on_workers(job, images, labels, fit_idx, base)
    else:
        top, chosen = _select(job, base, lambda: _batches(data["field"], images, labels, fit_idx,
                                                          tcfg.finetune_batch_size, tcfg.finetune_steps, seed))
    return top, ({**chosen, "trained_on": len(fit_idx)} if len(val_idx) else chosen)


def _select(job: dict, base: Config, batches) -> tuple[float, dict]:
    """Train each candidate of `job` on batches() (a fresh pass each), keep the best on the validation slice
    and score it on the test split: (test top-1, its hyperparameters, with val_top1 when there was a slice)."""
    val_x, val_y = job["val"]
    best = None
    for hp in job["candidates"]:
        with torch.random.fork_rng():  # the caller's random state stays as it was
            torch.manual_seed(job["seed"])
            spec = job["spec"]
            enc = copy.deepcopy(job["encoder"]) if job["encoder"] is not None else from_spec(spec)
            engine = train(enc, job["classes"], job["seed"], batches(), base, job["tcfg"], field=job["field"], **hp)
        score = accuracy(engine, val_x, val_y) if len(val_y) else 0.0
        if best is None or score > best[0]:
            best = (score, hp, engine)
        del engine
    score, hp, engine = best
    return accuracy(engine, *job["test"]), ({**hp, "val_top1": round(score, 4)} if len(val_y) else hp)


def _on_workers(job: dict, images: np.ndarray, labels: np.ndarray, fit_idx: np.ndarray, base: Config):
    """_select on transfer.finetune_workers Ray Train workers (each candidate one DeepSpeed engine across them, in
    one worker group): the training views come from evaluation's labelled Ray Data stream (stream.labelled_views,
    in _order and kept in order, each global batch split across the workers), the rest of `job` travels with the
    loop's config."""
    from sslscale.data import stream
    from sslscale.runtime.cluster import ensure_ray
    from sslscale.training import train as ray_train

    tcfg, workers = job["tcfg"], job["tcfg"].finetune_workers
    ensure_ray()
    stream.quiet()
    order, view_ids = _order(fit_idx, len(images), tcfg.finetune_batch_size, tcfg.finetune_steps, job["seed"])
    views = stream.labelled_views(job["field"], images, labels, order, view_ids, VIEWS, job["seed"],
                                  tcfg.finetune_batch_size // workers, base.data.task_cpus)
    got = ray_train.run_workers(_worker_loop, {"job": job}, base, workers=workers, key="transfer.finetune_workers",
                                datasets={"train": views}, ingest=stream.in_order(), name="fine-tuning")
    return got["top1"], json.loads(got["chosen"])


def _worker_loop(loop_config: dict) -> None:
    """On each Ray Train worker of _on_workers: _select on its share of the stream; every rank scores the whole
    validation and test sets (under ZeRO-3 a forward is a collective all ranks join), rank 0 reports."""
    from sslscale.training import train as ray_train

    cfg, job = Config.from_dict(loop_config["config"]), loop_config["job"]
    rank = ray_train.worker_setup(cfg)
    per_worker = job["tcfg"].finetune_batch_size // job["tcfg"].finetune_workers
    top, chosen = _select(job, cfg, lambda: ray_train.worker_batches("train", per_worker))
    ray_train.report_result({"top1": top, "chosen": json.dumps(chosen)}, rank)
