"""Configuration as data: typed dataclasses, `key=value` overrides, flat params.

A `Config` is built from a recipe (pipelines/), changed by `section.key=value` overrides, validated on the driver
before any worker starts (checks.validate), and serialised whole (to a dict, to flat `a.b` MLflow params, to JSON
in checkpoints). A bad key or value is one `SslscaleError` line naming it and what is allowed. Plain data: no torch
is imported here, and a method's section (methods/<name>.py) loads when its keys are first read or set.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import sys
import typing
from dataclasses import dataclass, field

from sslscale.encoders import NAMES as ENCODER_NAMES
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
    encoder: str = _choice("resnet", *ENCODER_NAMES)  # a family of encoders/ (REGISTRY)
    widths: tuple = (32, 64, 128)  # resnet: channels per stage
    depths: tuple = (1, 1, 1)  # resnet: residual blocks per stage
    patch_size: int = 4  # vit: side of a square patch in pixels; must divide the image size
    dim: int = 192  # vit and text: token width (192 tiny, 384 small)
    vit_depth: int = 12  # vit and text: transformer blocks
    heads: int = 3  # vit and text: attention heads; must divide model.dim
    vit_preset: str = _choice("none", "none", "tiny", "small")  # vit: tiny or small set dim, vit_depth and heads
    init: str = ""  # an exported encoder (file or run folder) whose weights start the tower of its kind: e.g. a
    # masked LM's text encoder for CLIP's text tower; the architecture (and a text tower's tokenizer) must match


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
