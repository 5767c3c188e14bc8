"""Which values a config may hold: `validate(cfg)` runs every check that spans keys (the chosen method's own
section included) before any worker starts and raises one SslscaleError line naming the key and what is allowed;
beside it, the parsers of the list- and resource-valued keys that the rest of the package reads (`resources`,
`driver_resource`, `list_items`) and the names of the transfer scores a config makes (`score_names`).
"""
from __future__ import annotations

import math

from sslscale.config import Config
from sslscale.errors import SslscaleError


def resources(spec: str) -> dict[str, float] | None:
    """'trainer:1,CPU:0.5' -> {'trainer': 1.0, 'CPU': 0.5}; '' -> {}; None when malformed."""
    found = {}
    for item in filter(None, (i.strip() for i in spec.split(","))):
        name, _, amount = item.rpartition(":")
        try:
            value = float(amount)
        except ValueError:
            return None
        if not name or name in found or not (value > 0 and math.isfinite(value)):
            return None
        found[name] = value
    return found


def driver_resource(spec: str) -> dict[str, float] | None:
    """'CPU:0.25' -> {'CPU': 0.25}; None when malformed or not exactly one resource."""
    found = resources(spec)
    return found if found and len(found) == 1 else None


PROTOCOLS = ("knn", "linear", "finetune", "scratch")  # what transfer.protocols may name
EMBEDDING_MAPS = ("tsne", "pca", "none")  # what transfer.embedding_map may name


def list_items(text: str) -> list[str]:
    """The stripped, non-empty items of a comma-separated value."""
    return [item.strip() for item in text.split(",") if item.strip()]


def _fraction(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0 < value <= 1 else None


def transfer_checks(tcfg) -> list[tuple[str, bool, str]]:
    """(key, ok, allowed) for transfer.protocols, transfer.label_fractions and the fine-tuning keys, as
    validate lists its checks: comma-separated, at least one, none repeated; protocols from PROTOCOLS,
    fractions numbers in (0, 1]."""
    protocols, fractions = list_items(tcfg.protocols), [_fraction(f) for f in list_items(tcfg.label_fractions)]
    workers, batch = max(1, tcfg.finetune_workers), tcfg.finetune_batch_size
    return [("transfer.protocols", bool(protocols) and set(protocols) <= set(PROTOCOLS)
             and len(set(protocols)) == len(protocols), f"a comma-separated list of {', '.join(PROTOCOLS)}"),
            ("transfer.label_fractions", bool(fractions) and None not in fractions
             and len(set(fractions)) == len(fractions), "comma-separated fractions in (0, 1], e.g. 0.01,0.1,1.0"),
            *[(f"transfer.{key}", _positive_floats(getattr(tcfg, key), upper), allowed)
              for key, upper, allowed in (("finetune_encoder_lr_scales", None, "comma-separated positive scales"),
                                          ("finetune_layer_decays", 1.0, "comma-separated decays in (0, 1]"),
                                          ("scratch_lrs", None, "comma-separated positive learning rates"))],
            ("transfer.finetune_steps", tcfg.finetune_steps > 0, "a positive number of steps"),
            ("transfer.finetune_batch_size", tcfg.finetune_batch_size > 0, "a positive number"),
            ("transfer.finetune_lr", tcfg.finetune_lr > 0, "a positive learning rate"),
            ("transfer.val_fraction", 0 < tcfg.val_fraction < 1, "a fraction in (0, 1)"),
            ("transfer.embedding_map", tcfg.embedding_map in EMBEDDING_MAPS, f"one of {', '.join(EMBEDDING_MAPS)}"),
            ("transfer.map_samples", tcfg.map_samples >= 2, "at least 2"),
            ("transfer.finetune_workers", tcfg.finetune_workers >= 1, "at least 1"),
            ("transfer.finetune_batch_size", batch % workers == 0 and batch // workers >= 2,
             f"a multiple of transfer.finetune_workers={workers} with at least 2 per worker, e.g. "
             f"transfer.finetune_batch_size={max(2 * workers, batch - batch % workers)}")]


def score_name(protocol: str, fraction: str) -> str:
    """A transfer score's name under its target (docs/design.md): `<protocol>_top1`, plus `/frac<f>` (f as written) for
    a label fraction below 1."""
    return f"{protocol}_top1" + ("" if float(fraction) == 1 else f"/frac{fraction}")


def score_names(tcfg) -> list[str]:
    """The names of the scores tcfg makes for the evaluated encoder, fraction 1 first when it is chosen."""
    protocols, fractions = list_items(tcfg.protocols), list_items(tcfg.label_fractions)
    fractions = sorted(fractions, key=lambda f: float(f) != 1)
    return [score_name(p, f) for f in fractions for p in protocols]


def _positive_floats(text: str, upper: float | None) -> bool:
    try:
        values = [float(v) for v in list_items(text)]
    except ValueError:
        return False
    return bool(values) and all(v > 0 and (upper is None or v <= upper) for v in values)


def method_checks(cfg: Config) -> list[tuple[str, bool, str]]:
    """The chosen method's own checks of its section (methods.Section.checks), keys made whole."""
    return [(key if "." in key else f"method.{cfg.method.name}.{key}", ok, allowed)
            for key, ok, allowed in cfg.method.chosen.checks(cfg)]


def validate(cfg: Config) -> Config:
    """Checks that span keys; raises one SslscaleError line naming the key. Returns cfg."""
    checks = [
        ("data.batch_size", cfg.data.batch_size > 0, "a positive number"),
        ("train.steps", cfg.train.steps > 0, "a positive number"),
        ("train.workers", cfg.train.workers > 0, "at least 1"),
        ("data.cpus", cfg.data.cpus > 0, "a positive number of CPUs"),
        ("data.buffer_mb", cfg.data.buffer_mb >= 0, "0 (four global batches' worth) or a number of MiB"),
        ("train.checkpoint_every", cfg.train.checkpoint_every > 0, "a positive number of steps"),
        ("train.health_every", cfg.train.health_every > 0, "a positive number of steps"),
        ("train.spectrum_k", cfg.train.spectrum_k >= 0, "0 (off) or a number of eigenvalues"),
        ("train.probe_samples", cfg.train.probe_samples > 0 or cfg.train.probe_samples == 0 == cfg.train.spectrum_k,
         "a positive number of images (0 only with train.spectrum_k=0)"),
        ("train.log_every", cfg.train.log_every > 0, "a positive number of steps"),
        ("train.keep_checkpoints", cfg.train.keep_checkpoints > 0, "at least 1"),
        ("train.max_failures", cfg.train.max_failures >= 0, "0 or more"),
        ("train.max_bad_steps", cfg.train.max_bad_steps >= 1, "1 or more"),
        ("engine.grad_accum", cfg.engine.grad_accum > 0, "at least 1"),
        ("optim.lr", cfg.optim.lr > 0, "a positive number"),
        ("optim.warmup_steps", cfg.optim.warmup_steps >= 0, "0 or more"),
        ("optim.min_lr_ratio", 0 <= cfg.optim.min_lr_ratio <= 1, "between 0 and 1"),
        ("data.crop_min_scale", 0 < cfg.data.crop_min_scale <= 1, "in (0, 1]"),
        ("model.widths", len(cfg.model.widths) == len(cfg.model.depths) > 0, "as many entries as model.depths"),
        ("transfer.knn_k", cfg.transfer.knn_k > 0, "a positive number"),
        ("transfer.batch_size", cfg.transfer.batch_size > 0, "a positive number"),
        ("transfer.probe_iters", cfg.transfer.probe_iters > 0, "a positive number"),
        ("transfer.train_samples", cfg.transfer.train_samples >= 0, "0 (the whole train split) or more"),
        *transfer_checks(cfg.transfer),  # transfer.protocols and transfer.label_fractions
        ("train.driver_resource", driver_resource(cfg.train.driver_resource) is not None,
         "NAME:AMOUNT with a positive amount, e.g. CPU:0.25 or sslscale_driver:1"),
        ("train.worker_resources", resources(cfg.train.worker_resources) is not None
         and not {"CPU", "GPU"} & set(resources(cfg.train.worker_resources) or {}),
         "NAME:AMOUNT[,NAME:AMOUNT] of custom resources (CPU is train.cpus_per_worker, GPU train.use_gpu)"),
        ("train.threads_per_worker", cfg.train.threads_per_worker > 0, "at least 1"),
        ("train.use_gpu", cfg.train.use_gpu in ("auto", "true", "false"), "auto, true or false ($SSLSCALE_USE_GPU)"),
        ("train.cpus_per_worker", cfg.train.cpus_per_worker > 0, "a positive number of CPUs"),
        ("data.shuffle_buffer", cfg.data.shuffle_buffer >= 0, "0 (off) or more"),
        ("data.jitter", cfg.data.jitter >= 0, "0 or more"),
        ("optim.clip", cfg.optim.clip >= 0, "0 (off) or more"),
        ("optim.weight_decay", cfg.optim.weight_decay >= 0, "0 or more"),
        ("optim.weight_decay_end", cfg.optim.weight_decay_end >= 0 or cfg.optim.weight_decay_end == -1,
         "0 or more, or -1 for a constant optim.weight_decay"),
        ("optim.beta1", 0 <= cfg.optim.beta1 < 1, "in [0, 1)"),
        ("optim.beta2", 0 <= cfg.optim.beta2 < 1, "in [0, 1)"),
        ("engine.zero3_persist", cfg.engine.zero3_persist >= 0, "0 (partition every tensor) or more elements"),
        ("optim.lr", math.isfinite(cfg.optim.lr), "a finite number"),
        ("model.widths", all(w > 0 for w in cfg.model.widths) and all(d > 0 for d in cfg.model.depths),
         "positive channel counts (and model.depths positive block counts)"),
        ("model.patch_size", cfg.model.patch_size > 0, "a positive number of pixels"),
        ("model.vit_preset", cfg.model.vit_preset == "none" or cfg.model.encoder == "vit",
         "none unless model.encoder=vit"),
        ("optim.name", cfg.optim.name != "lars" or cfg.engine.zero_stage == 0,
         "adamw under ZeRO 1-3 (ZeRO flattens the per-layer tensors LARS scales); for lars set engine.zero_stage=0"),
    ]
    checks += [
        ("data.n_local", cfg.data.n_local >= 0, "0 or more"),
        ("data.local_size", cfg.data.local_size >= 0, "0 (half the image side) or a positive number of pixels"),
        ("data.local_min_scale", 0 < cfg.data.local_min_scale <= cfg.data.local_max_scale <= 1,
         "in (0, data.local_max_scale], and data.local_max_scale at most 1"),
    ]
    if cfg.model.vit_preset == "none":  # a preset sets these three itself
        checks += [
            ("model.dim", cfg.model.dim > 0 and cfg.model.dim % 4 == 0, "a positive multiple of 4 (sin-cos positions)"),
            ("model.vit_depth", cfg.model.vit_depth > 0, "at least 1"),
            ("model.heads", cfg.model.heads > 0 and cfg.model.dim % cfg.model.heads == 0,
             "a positive divisor of model.dim"),
        ]
    for key in ("flip", "jitter_prob", "grayscale", "blur", "solarize"):
        checks.append((f"data.{key}", 0 <= getattr(cfg.data, key) <= 1, "a probability in [0, 1]"))
    checks += method_checks(cfg)
    for key, ok, allowed in checks:
        if not ok:
            raise SslscaleError(f"bad value for {key}: must be {allowed}")
    per_worker = cfg.train.workers * cfg.engine.grad_accum
    if cfg.data.batch_size % per_worker or cfg.micro_batch() < 2:
        raise SslscaleError(
            f"data.batch_size={cfg.data.batch_size} must split evenly into train.workers x engine.grad_accum"
            f" = {per_worker} micro-batches of at least 2 samples"
        )
    return cfg
