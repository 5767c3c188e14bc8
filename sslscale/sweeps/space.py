"""A sweep's search space as data: `KEY=DIST` strings parsed, checked against the config, and applied to it.

DIST is one of
  choice:a,b,c        one of the values, sampled (use `|` between values that contain commas: 8,16|8,32)
  grid:a,b,c          every value, in this order (each grid value multiplies --samples)
  uniform:lo:hi       a float in [lo, hi]
  loguniform:lo:hi    a float in [lo, hi], uniform in log space (lo > 0)
  randint:lo:hi       a whole number in [lo, hi)
Every value a trial could get is checked by the config's own validator before any trial starts: each choice and
grid value, and both ends of a range. No Ray here: tune.py turns a `Space` into Ray Tune's domains.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from sslscale.checks import validate

from sslscale.config import Config, flat_method_key, get_key, key_type, note_renamed
from sslscale.errors import SslscaleError

KINDS = ("choice", "grid", "uniform", "loguniform", "randint")
RANGES = ("uniform", "loguniform", "randint")
# what every trial of one sweep shares: its length (ASHA's max_t), where its data, files and driver are, and the
# transfer target (the ranking metric names it)
FIXED = ("recipe", "train.steps", "data.corpus", "data.split", "transfer.target", "train.storage",
         "train.driver_resource")


@dataclass(frozen=True)
class Dist:
    key: str
    kind: str
    values: tuple  # choice/grid: the value strings; ranges: (lo, hi) as numbers
    spec: str  # as the user wrote it, for messages, params and the retrain command

    @property
    def log(self) -> bool:
        return self.kind == "loguniform"


Space = dict  # key -> Dist, in the order given


def _parse_one(item: str) -> Dist:
    key, sep, spec = item.partition("=")
    key, spec = key.strip(), spec.strip()
    kind, _, rest = spec.partition(":")
    if not sep or not key or kind not in KINDS or not rest:
        raise SslscaleError(f"--space {item!r} is not KEY=DIST; write e.g. optim.lr=loguniform:1e-4:1e-2 "
                            f"(DIST: {', '.join(k + ':...' for k in KINDS)})")
    if kind in RANGES:
        parts = rest.split(":")
        try:
            lo, hi = (int(p) if kind == "randint" else float(p) for p in parts)
        except ValueError:
            what = "two whole numbers" if kind == "randint" else "two numbers"
            raise SslscaleError(f"--space {item!r}: {kind} takes {what}, {kind}:LOW:HIGH") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi) or (kind == "loguniform" and lo <= 0):
            need = "0 < LOW < HIGH" if kind == "loguniform" else "LOW < HIGH"
            raise SslscaleError(f"--space {item!r}: {kind} needs {need}")
        return Dist(key, kind, (lo, hi), spec)
    values = tuple(v.strip() for v in rest.split("|" if "|" in rest else ","))
    if any(not v for v in values) or len(set(values)) != len(values):
        raise SslscaleError(f"--space {item!r}: {kind} needs distinct, non-empty values, e.g. {kind}:0.1,0.2")
    return Dist(key, kind, values, spec)


def parse(items: list[str]) -> Space:
    """`["optim.lr=loguniform:1e-4:1e-2", ...]` -> {key: Dist}; one line naming the problem on a bad spec."""
    space: Space = {}
    for item in items:
        dist = _parse_one(item)
        if dist.key in space:
            raise SslscaleError(f"--space {dist.key} is given twice; give each key one distribution")
        space[dist.key] = dist
    return space


def renamed(items: list[str], base: Config) -> list[str]:
    """Space items with an old flat method key (method.temperature) written as the base's chosen method's key
    (method.simclr.temperature), with a one-line note; the old names go in the next release."""
    if any(item.partition("=")[0].strip() == "method.name" for item in items):
        return list(items)  # the flat key then reaches every searched method's section, as it did
    out = []
    for item in items:
        key, sep, spec = item.partition("=")
        new = [k for k in flat_method_key(base, key.strip()) if k.startswith(f"method.{base.method.name}.")]
        if new:
            note_renamed(key.strip(), new[0])
            item = f"{new[0]}{sep}{spec}"
        out.append(item)
    return out


def _candidates(dist: Dist) -> list:
    """The values whose validity stands for the whole distribution: each listed value, or the ends of a range."""
    if dist.kind == "randint":
        return [dist.values[0], dist.values[1] - 1]
    return list(dist.values)


def check(space: Space, base: Config, search: str = "random", overrides: list[str] = ()) -> None:
    """Every value a trial could get passes the config's validator on top of `base`; one line on the first that
    does not (an unknown key, a value outside a key's choices, a range on a key that is not a number)."""
    if not space:
        raise SslscaleError("the sweep has no search space: add --space KEY=DIST (e.g. optim.lr=loguniform:1e-4:1e-2) "
                            "or use a sweep recipe such as simclr_fmnist_sweep")
    if search == "optuna" and any(d.kind == "grid" for d in space.values()):
        raise SslscaleError("grid: cannot be used with --search optuna (Optuna samples, it does not enumerate); "
                            "use choice: or --search random")
    fixed = {o.partition("=")[0].strip() for o in overrides}
    for key, dist in space.items():
        if key in fixed:
            raise SslscaleError(f"{key} is both searched (--space) and fixed (an override); drop one of them")
        if key in FIXED or key.startswith("tracking."):
            raise SslscaleError(f"--space {key}: {', '.join(FIXED)} and tracking.* are the same for every trial "
                                f"of a sweep; sweep them as separate sweeps")
        try:
            kind = key_type(key)
        except SslscaleError as e:
            raise SslscaleError(f"--space {key}={dist.spec}: {e}") from None
        if dist.kind in ("uniform", "loguniform") and kind != "float":
            fix = "randint:LOW:HIGH" if kind == "int" else "choice:a,b"
            raise SslscaleError(f"--space {key}={dist.spec}: {key} is not a real number; use {fix}")
        if dist.kind == "randint" and kind != "int":
            raise SslscaleError(f"--space {key}={dist.spec}: {key} is not a whole number; use uniform: or choice:")
        for value in _candidates(dist):
            try:
                validate(apply(base, {key: value}))
            except SslscaleError as e:
                raise SslscaleError(f"--space {key}={dist.spec}: the value {value} is refused: {e}") from None


def apply(base: Config, point: dict) -> Config:
    """A copy of base with the point's values ({key: value}) set through the config's own coercion."""
    return base.override(as_overrides(point))


def _text(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def default_point(space: Space, base: Config) -> dict | None:
    """The base config's own value of every searched key, as a point of the space (Tune's points_to_evaluate),
    or None when a default lies outside its key's distribution (then no trial is the default), and with a grid
    (which runs every listed value anyway: list the default among them)."""
    if any(d.kind == "grid" for d in space.values()):
        return None
    point = {}
    for key, dist in space.items():
        value = get_key(base, key)
        if dist.kind in ("choice", "grid"):
            match = [v for v in dist.values if _same(key, v, value)]
            if not match:
                return None
            point[key] = match[0]
        elif dist.values[0] <= value <= dist.values[1] - (dist.kind == "randint"):
            point[key] = value
        else:
            return None
    return point


def _coerced(point: dict) -> dict:
    """A point's values as the config holds them (ints, floats, tuples), through the config's own coercion."""
    cfg = apply(Config(), point)
    return {k: get_key(cfg, k) for k in point}


def _same(key: str, text: str, value) -> bool:
    return _coerced({key: text})[key] == value


def typed(point: dict) -> dict:
    """A point's values as the config holds them (Tune hands choice values back as the strings they were given),
    tuples written back as "8,16" so they read as they were searched."""
    return {k: _text(v) if isinstance(v, tuple) else v for k, v in _coerced(point).items()}


def as_overrides(point: dict) -> list[str]:
    """{key: value} -> ["key=value", ...], the form `sslscale pretrain` takes."""
    return [f"{k}={_text(v)}" for k, v in point.items()]
