import pytest

from pipelines import RECIPES, load_recipe
from sslscale.config import Config, flatten, validate
from sslscale.errors import SslscaleError


def test_override_types_and_roundtrip():
    cfg = Config().override(["train.steps=7", "optim.lr=0.5", "model.widths=8,16", "model.depths=1,2",
                             "tracking.enabled=false", "engine.zero_stage=2"])
    assert (cfg.train.steps, cfg.optim.lr, cfg.model.widths, cfg.tracking.enabled) == (7, 0.5, (8, 16), False)
    assert Config.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("item, words", [
    ("train.stepz=3", ["unknown config key 'train.stepz'", "train.steps"]),
    ("nosection.x=1", ["unknown config key"]),
    ("train.steps=many", ["bad value 'many' for train.steps", "whole number"]),
    ("engine.zero_stage=5", ["bad value 5 for engine.zero_stage", "allowed 0, 1, 2, 3"]),
    ("engine.precision=fp16", ["allowed auto, fp32, bf16"]),
    ("train.steps", ["is not key=value"]),
])
def test_bad_overrides_say_key_and_allowed(item, words):
    with pytest.raises(SslscaleError) as e:
        Config().override([item])
    assert all(w in str(e.value) for w in words), str(e.value)
    assert "\n" not in str(e.value)


def test_validate_batch_split():
    with pytest.raises(SslscaleError, match="data.batch_size=30 must split evenly"):
        validate(Config().override(["data.batch_size=30", "train.workers=4"]))


@pytest.mark.parametrize("item, words", [
    ("optim.name=lars", "for lars set engine.zero_stage=0"),
    ("data.flip=3", "data.flip: must be a probability"),
    ("train.threads_per_worker=0", "at least 1"),
    ("model.widths=0,8,8", "positive channel counts"),
    ("optim.weight_decay_end=-0.5", "-1 for a constant optim.weight_decay"),
    ("optim.beta2=1", r"optim.beta2: must be in \[0, 1\)"),
    ("model.vit_preset=small", "model.vit_preset: must be none unless model.encoder=vit"),
    ("method.freeze_last_layer=-1", "method.freeze_last_layer: must be 0 or more steps"),
])
def test_validate_ranges(item, words):
    with pytest.raises(SslscaleError, match=words):
        validate(Config().override([item]))
    validate(Config().override(["optim.name=lars", "engine.zero_stage=0"]))


def test_flatten_gives_dotted_keys():
    flat = flatten(Config().to_dict())
    assert flat["train.steps"] == Config().train.steps and "optim.lr" in flat


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipes_are_valid(name):
    assert validate(load_recipe(name)).recipe == name
