"""Configuration as data: typed dataclasses, `key=value` overrides, flat params, validation.

A `Config` is built from a recipe (pipelines/), changed by `section.key=value` overrides, validated on the driver
before any worker starts, and serialised whole (to a dict, to flat `a.b` MLflow params, to JSON in checkpoints).
Every problem is reported as one `SslscaleError` line naming the key and what is allowed.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import sys
import typing
from dataclasses import dataclass, field

from sslscale.errors import SslscaleError
from sslscale.methods import NAMES


def _choice(default, *allowed):
    return field(default=default, metadata={"choices": allowed})


@dataclass
class DataConfig:
    corpus: str = "fmnist"  # a built-in name (fmnist, digits: prepared on first use) or a prepared folder
    split: str = "train"  # pretraining reads this split only, never its labels
    batch_size: int = 256  # global batch per optimizer step, across workers and accumulation
    seed: int = 0  # views are a function of (seed, epoch, sample id)
    crop_min_scale: float = 0.3  # random resized crop: smallest area fraction
    flip: float = 0.5  # probability of a horizontal flip
    jitter: float = 0.4  # brightness/contrast (and saturation on RGB) strength
    jitter_prob: float = 0.8
    grayscale: float = 0.2  # probability of grayscale (RGB corpora only)
    blur: float = 0.0  # probability of a Gaussian blur
    solarize: float = 0.0  # probability of solarisation (BYOL uses 0.2 on its second view)
    n_local: int = 0  # DINO multi-crop: small local views per image besides the two global ones
    local_size: int = 0  # side of a local view in pixels (0: half the image side)
    local_min_scale: float = 0.05  # local views crop an area fraction in [local_min_scale, local_max_scale]
    local_max_scale: float = 0.3
    cpus: float = 1.0  # CPUs Ray Data may use for decoding and views
    # object store for views made ahead of training, MiB (0: four global batches' worth), on top of what Ray's
    # split across workers holds (stream.ingest_options)
    buffer_mb: int = 0
    shuffle_buffer: int = 2048  # rows in each worker's local shuffle buffer (0: off)
    on_error: str = _choice("fail", "fail", "skip")
    deterministic: bool = False  # keep Ray Data's order: the same seed and world size give the same batches

    @property
    def task_cpus(self) -> float:
        """CPUs one Ray Data task of the stream reserves: a whole one, or data.cpus where that is less (a node's
        fraction left beside the training workers can then run the stream)."""
        return min(1.0, self.cpus)


@dataclass
class ModelConfig:
    # resnet50: the bottleneck ImageNet ResNet-50; text: a transformer on token ids (dim, vit_depth, heads as vit)
    encoder: str = _choice("resnet", "resnet", "resnet50", "vit", "text")
    widths: tuple = (32, 64, 128)  # resnet: channels per stage
    depths: tuple = (1, 1, 1)  # resnet: residual blocks per stage
    patch_size: int = 4  # vit: side of a square patch in pixels; must divide the image size
    dim: int = 192  # vit and text: token width (192 tiny, 384 small)
    vit_depth: int = 12  # vit and text: transformer blocks
    heads: int = 3  # vit and text: attention heads; must divide model.dim
    vit_preset: str = _choice("none", "none", "tiny", "small")  # vit: tiny or small set dim, vit_depth and heads


@dataclass(eq=False)
class MethodConfig:
    """`method.name` picks the pretext method; each method's own keys are its section, `method.<name>.<key>`: the
    Section dataclass declared in the method's file (methods.method_class(name).section). A section is made on
    first use (`section(name)`, `chosen`), so building, overriding and printing a config loads no method file and
    no torch until a method's own keys are read; two configs are equal when every section either uses is."""

    name: str = _choice("simclr", *NAMES)
    sections: dict = field(default_factory=dict, repr=False)  # name -> Section, the ones used so far

    def section(self, name: str) -> typing.Any:
        """Method `name`'s section (its defaults until set); one line for a name no method has."""
        if name not in self.sections:
            if name not in NAMES:
                raise SslscaleError(f"unknown method {name!r}; known: {', '.join(NAMES)}")
            from sslscale.methods import method_class

            self.sections[name] = method_class(name).section()
        return self.sections[name]

    @property
    def chosen(self) -> typing.Any:
        """The chosen method's section."""
        return self.section(self.name)

    def to_dict(self, chosen_only: bool = False) -> dict:
        """{"name": ..., <method>: {key: value}} for the chosen method and, unless chosen_only, every section used."""
        names = [self.name] if chosen_only else sorted({self.name, *self.sections})
        return {"name": self.name, **{n: dataclasses.asdict(self.section(n)) for n in names}}

    def __eq__(self, other) -> bool:
        return isinstance(other, MethodConfig) and self.name == other.name and all(
            self.section(n) == other.section(n) for n in {*self.sections, *other.sections})


@dataclass
class OptimConfig:
    name: str = _choice("adamw", "adamw", "lars")
    lr: float = 2e-3  # peak learning rate, reached after warmup
    weight_decay: float = 1e-4  # not applied to biases and norm weights ...
    weight_decay_end: float = -1.0  # ... held constant (-1), or on a cosine towards this at train.steps (DINO 0.4)
    beta1: float = 0.9  # AdamW moment decays (MAE: 0.9, 0.95)
    beta2: float = 0.999
    momentum: float = 0.9  # LARS only
    warmup_steps: int = 20
    min_lr_ratio: float = 0.01  # cosine floor as a fraction of lr
    clip: float = 1.0  # max gradient norm; 0 turns clipping off


@dataclass
class EngineConfig:
    zero_stage: int = _choice(1, 0, 1, 2, 3)  # 3 also partitions the parameters (tested on CPU, gloo)
    zero3_persist: int = 100000  # ZeRO-3: tensors of at most this many elements stay whole on every rank
    precision: str = _choice("auto", "auto", "fp32", "bf16")  # auto: bf16 on GPU, fp32 on CPU
    grad_accum: int = 1


@dataclass
class TrainConfig:
    steps: int = 500
    workers: int = 2
    cpus_per_worker: float = 1.0
    # custom resources each training worker also reserves, NAME:AMOUNT[,NAME:AMOUNT]: pins training to the nodes
    # that offer them (GPU nodes are found by their GPUs; this is for other kinds), leaving the rest to Ray Data
    worker_resources: str = ""
    threads_per_worker: int = 1  # torch intra-op threads per worker
    # auto: GPUs when the Ray cluster has any now. A cluster whose GPU nodes an autoscaler starts on demand says
    # true ($SSLSCALE_USE_GPU on its nodes, as ray_cluster.yaml sets it)
    use_gpu: str = field(default_factory=lambda: os.environ.get("SSLSCALE_USE_GPU") or "auto",
                         metadata={"choices": ("auto", "true", "false")})
    checkpoint_every: int = 100  # steps; the last step always checkpoints
    health_every: int = 25  # steps between label-free health metrics (rank, std)
    spectrum_k: int = 32  # top eigenvalues of the probe set's embedding covariance on health steps (0: off)
    probe_samples: int = 1024  # training images in the fixed probe set the spectrum is measured on
    # steps between logged scalars (loss averaged over every rank, lr, grad norm, samples/s): each costs one
    # all-reduce and a read back from the device; the last step always logs
    log_every: int = 10
    keep_checkpoints: int = 2
    max_failures: int = 1  # worker-group restarts from the last checkpoint
    max_bad_steps: int = 10  # steps in a row with a non-finite loss/gradient (each skipped) before the run stops
    # run folders, checkpoints and exports, under <storage>/<run id>/ (sweeps: <storage>/sweeps/); on a cluster a
    # path every node sees. Default $SSLSCALE_STORAGE (a cluster's nodes set it), else runs/ here. Was output_dir.
    storage: str = field(default_factory=lambda: os.environ.get("SSLSCALE_STORAGE") or "runs")
    # what a sweep trial's or job's driver reserves, NAME:AMOUNT: a fraction of a CPU, or a custom resource a
    # cluster's head nodes offer (sslscale_driver:1); its workers get placement groups of their own (Ray Train V2).
    # Default $SSLSCALE_DRIVER_RESOURCE (ray_cluster.yaml sets it on every node), else CPU:0.25.
    driver_resource: str = field(default_factory=lambda: os.environ.get("SSLSCALE_DRIVER_RESOURCE") or "CPU:0.25")


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str = ""  # empty: $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db in the working directory
    experiment: str = "sslscale"
    run_name: str = ""
    parent_run_id: str = ""  # nest this run under a parent (sweeps)


@dataclass
class TransferConfig:
    enabled: bool = True  # score the encoder when pretraining ends
    target: str = "fmnist"  # a built-in name (fmnist, digits) or a prepared labelled corpus folder
    baseline: bool = True  # also score a randomly initialised encoder and raw pixels
    knn_k: int = 20
    probe_iters: int = 100  # L-BFGS iterations of the linear probe
    batch_size: int = 512
    train_samples: int = 0  # kNN and probe fit on a seeded subset of this many train images (0: all); test stays whole
    protocols: str = "knn,linear"  # comma-separated, from PROTOCOLS
    # comma-separated fractions in (0, 1] of the train split's labels (after train_samples) each protocol is also fit
    # on: a stratified, seeded subset; scores of a fraction f < 1 are named <protocol>_top1/frac<f>
    label_fractions: str = "1.0"
    seed: int = 0  # draws train_samples' subset, the label fractions, validation slices, fine-tuning order and views
    # the finetune and scratch protocols (finetune.py): steps, batch and head LR; candidates (comma-separated) chosen
    # on a seeded validation slice of val_fraction of the labelled train subset, never on the test split
    finetune_steps: int = 500
    finetune_batch_size: int = 128
    finetune_lr: float = 3e-3  # the head's; the encoder's is this times a scale
    finetune_encoder_lr_scales: str = "0.1,1.0"
    finetune_layer_decays: str = "1.0"  # layer-wise LR decay, ViT and text encoders, e.g. 0.65,0.75
    scratch_lrs: str = "3e-3,1e-2"
    val_fraction: float = 0.1
    # pictures of the scored encoder (MLflow artifacts of the run; `sslscale evaluate --out`): the linear probe's
    # confusion matrix and a 2-D map of map_samples test embeddings (seeded subsample), by tsne | pca | none
    embedding_map: str = "tsne"
    map_samples: int = 2000
    finetune_workers: int = 1  # > 1: finetune and scratch train under Ray Train on that many workers


@dataclass
class Config:
    recipe: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)

    def to_dict(self, chosen_method_only: bool = False) -> dict:
        """The whole config as nested dicts; with chosen_method_only, other methods' sections are left out (what
        MLflow shows: they do not act on the run)."""
        sections = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {name: value.to_dict(chosen_method_only) if isinstance(value, MethodConfig)
                else dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
                for name, value in sections.items()}

    @classmethod
    def from_dict(cls, data: dict) -> "Config":
        cfg = cls()
        for key, value in flatten(data).items():
            set_key(cfg, key, value, note=False)  # a config saved before a rename reads silently
        return cfg

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def override(self, items: list[str]) -> "Config":
        """Apply `section.key=value` strings in order; returns a new Config."""
        cfg = copy.deepcopy(self)
        for item in items:
            key, sep, raw = item.partition("=")
            if not sep:
                raise SslscaleError(f"override {item!r} is not key=value: write it like train.steps=100")
            set_key(cfg, key.strip(), raw.strip())
        return cfg

    def set_for_methods(self, **values) -> "Config":
        """Set each key in every method's section that has it: for a recipe whose method the user may switch
        (debug: small heads whichever method runs). Returns self."""
        for key, value in values.items():
            for each in method_keys(self, key):
                set_key(self, each, value)
        return self

    def micro_batch(self) -> int:
        """Samples per worker per forward pass."""
        return self.data.batch_size // (self.train.workers * self.engine.grad_accum)


def flatten(data: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}: the flat keys MLflow params and overrides use."""
    flat = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _all_keys() -> list[str]:
    """Every key but the methods' own (method.<name>.<key>: _known lists one method's)."""
    data = Config().to_dict()
    data["method"] = {"name": data["method"]["name"]}
    return sorted(flatten(data))


def _field(cfg: Config, key: str):
    """(the dataclass that holds key, its field); one line naming an unknown key and the known ones."""
    parts = key.split(".")
    if parts[0] == "method" and len(parts) == 3 and parts[1] in NAMES:
        obj = cfg.method.section(parts[1])
    elif len(parts) == 2 and parts[0] in flatten_sections():
        obj = getattr(cfg, parts[0])
    elif key == "recipe":
        obj = cfg
    else:
        obj = None
    fields = {f.name: f for f in dataclasses.fields(obj) if f.name != "sections"} if obj is not None else {}
    if parts[-1] not in fields:
        raise SslscaleError(f"unknown config key {key!r}; known keys: {', '.join(_known(cfg, parts))}")
    return obj, fields[parts[-1]]


def _known(cfg: Config, parts: list[str]) -> list[str]:
    """The keys to list after an unknown one: its section's; for method keys, method.name and the named (else the
    chosen) method's section, with a pointer to the others."""
    if parts[0] != "method":
        return [k for k in _all_keys() if parts[0] not in flatten_sections() or k.startswith(parts[0] + ".")]
    name = parts[1] if len(parts) > 2 and parts[1] in NAMES else cfg.method.name
    own = flatten({"method": {name: dataclasses.asdict(cfg.method.section(name))}})
    return ["method.name", *own, "(other methods: method.<name>.<key>)"]


def flatten_sections() -> set[str]:
    return {f.name for f in dataclasses.fields(Config) if f.name != "recipe"}


def _coerce(key: str, kind, value):
    name = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
    try:
        if name == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if text in ("true", "1", "yes", "on"):
                return True
            if text in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if name == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if name == "float":
            return float(value)
        if name == "tuple":
            items = value.split(",") if isinstance(value, str) else value
            return tuple(int(v) for v in items)
        return str(value)
    except (TypeError, ValueError):
        example = {"bool": "true or false", "int": "a whole number", "float": "a number", "tuple": "e.g. 32,64,128"}
        raise SslscaleError(f"bad value {value!r} for {key}: expected {example.get(name, name)}") from None


def key_type(key: str) -> str:
    """The type name of a config key (int, float, str, bool, tuple); one line naming an unknown key."""
    cfg = Config()
    obj, fld = _field(cfg, (flat_method_key(cfg, key) or [ALIASES.get(key, key)])[0])
    hint = typing.get_type_hints(type(obj))[fld.name]
    return getattr(hint, "__name__", str(hint))


# old name -> new name; the old one keeps working for one release, with a one-line note
ALIASES = {"train.output_dir": "train.storage"}
# the flat method keys before each method had its own section (method.<old> -> <new> in the sections that have it)
RENAMED_METHOD_KEYS = {"barlow_lambda": "lambd", "vicreg_sim": "sim_coeff", "vicreg_std": "std_coeff",
                       "vicreg_cov": "cov_coeff"}
# the methods that had flat keys: an old flat key never sets a section of a method added since
FLAT_KEY_METHODS = ("simclr", "barlow_twins", "vicreg", "byol", "moco_v3", "dino", "mae", "rotation", "denoising_ae")
_noted: set[str] = set()


def method_keys(cfg: Config, key: str) -> list[str]:
    """method.<name>.<key> for every method whose section has `key`."""
    from sslscale.methods import method_class

    return [f"method.{name}.{key}" for name in NAMES
            if key in {f.name for f in dataclasses.fields(method_class(name).section)}]


def flat_method_key(cfg: Config, key: str) -> list[str]:
    """The keys an old flat method key (method.temperature) stands for: the same key in every method's section that
    has it, as the flat key acted on whichever method ran; [] for any other key."""
    parts = key.split(".")
    if len(parts) != 2 or parts[0] != "method" or parts[1] == "name":
        return []
    return [k for k in method_keys(cfg, RENAMED_METHOD_KEYS.get(parts[1], parts[1]))
            if k.split(".")[1] in FLAT_KEY_METHODS]


def note_renamed(key: str, text: str) -> None:
    """One line on stderr, once per process and key, that an old key name is now `text`."""
    if key not in _noted:
        _noted.add(key)
        print(f"sslscale: note: {key} is now {text}; the old name goes in the next release", file=sys.stderr)


def get_key(cfg: Config, key: str):
    """The value of one `a.b` key; an old flat method key reads the chosen method's key where it has one, else the
    first method's that does, and an old name its new key."""
    new = flat_method_key(cfg, key)
    if new:
        key = next((k for k in new if k.startswith(f"method.{cfg.method.name}.")), new[0])
    obj, fld = _field(cfg, ALIASES.get(key, key))
    return getattr(obj, fld.name)


def set_key(cfg: Config, key: str, value, note: bool = True) -> None:
    """Set one `a.b=value` key, coerced to its type and checked against its choices; one line for a bad one. An old
    name sets its new key(s), with a one-line note unless note=False."""
    new = flat_method_key(cfg, key)
    if new:
        if note:
            note_renamed(key, f"method.<name>.{new[0].rpartition('.')[2]} ({', '.join(k.split('.')[1] for k in new)})")
        for each in new:
            set_key(cfg, each, value)
        return
    if key in ALIASES:
        if note:
            note_renamed(key, ALIASES[key])
        key = ALIASES[key]
    if key == "recipe":
        cfg.recipe = str(value)
        return
    obj, fld = _field(cfg, key)
    hints = typing.get_type_hints(type(obj))
    value = _coerce(key, hints[fld.name], value)
    choices = fld.metadata.get("choices")
    if choices and value not in choices:
        raise SslscaleError(f"bad value {value!r} for {key}: allowed {', '.join(map(str, choices))}")
    setattr(obj, fld.name, value)


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
    config.validate lists its checks: comma-separated, at least one, none repeated; protocols from PROTOCOLS,
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
