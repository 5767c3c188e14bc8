import pytest

from pipelines import RECIPES, load_recipe
from sslscale.checks import validate
from sslscale.config import Config, flatten
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
    ("method.name=dino method.dino.freeze_last_layer=-1", "method.dino.freeze_last_layer: must be 0 or more steps"),
])
def test_validate_ranges(item, words):
    with pytest.raises(SslscaleError, match=words):
        validate(Config().override(item.split()))
    validate(Config().override(["optim.name=lars", "engine.zero_stage=0"]))


def test_flatten_gives_dotted_keys():
    flat = flatten(Config().to_dict())
    assert flat["train.steps"] == Config().train.steps and "optim.lr" in flat


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipes_are_valid(name):
    assert validate(load_recipe(name)).recipe == name


# --- per-method sections: method.<name>.<key> ------------------------------------------------------------------------

def test_every_registered_method_has_a_section_and_only_those():
    """The registry is the one list: method.name's choices and the method sections come from it, each section
    is the method's own Section dataclass, its defaults pass its own checks, and its checks name its own keys."""
    import dataclasses

    from sslscale.methods import NAMES, REGISTRY, method_class
    from sslscale.methods.base import Section

    cfg = Config()
    assert [f.name for f in dataclasses.fields(cfg.method)] == ["name", "sections"] and NAMES == tuple(REGISTRY)
    assert dataclasses.fields(cfg.method)[0].metadata["choices"] == NAMES
    for name in NAMES:
        cls, section = method_class(name), cfg.method.section(name)
        assert type(section) is cls.section and issubclass(cls.section, Section) and cls.section is not Section
        own = {f.name for f in dataclasses.fields(section)}  # may be none (GPT: the model says everything)
        checks = section.checks(Config().override(["model.encoder=vit"]))
        assert all(ok for _, ok, _ in checks), (name, checks)
        assert {k for k, _, _ in checks if "." not in k} <= own, name
    assert {load_recipe(r).method.name for r in RECIPES} == set(NAMES)  # and every method has a recipe
    with pytest.raises(SslscaleError, match="unknown method 'simclrr'; known: simclr, "):
        cfg.method.section("simclrr")


def test_only_the_chosen_methods_section_is_checked_and_shown():
    cfg = Config().override(["method.name=byol", "method.dino.out_dim=-1", "method.byol.momentum=0.9"])
    validate(cfg)  # DINO's section does not act on a BYOL run
    with pytest.raises(SslscaleError, match="bad value for method.dino.out_dim: must be a positive number"):
        validate(cfg.override(["method.name=dino"]))
    shown = cfg.to_dict(chosen_method_only=True)["method"]
    assert shown == {"name": "byol", "byol": {"proj_hidden": 512, "proj_dim": 128, "momentum": 0.9,
                                              "momentum_final": 1.0, "view_blur": "", "view_solarize": ""}}
    assert Config.from_dict(cfg.to_dict(chosen_method_only=True)).method.section("byol").momentum == 0.9


def test_a_real_run_logs_only_the_chosen_methods_section(tmp_path):
    import json

    import mlflow

    from sslscale.runtime import tracking

    uri = f"sqlite:///{tmp_path}/mlruns.db"
    run_id = tracking.start_run(uri, Config().override(["method.name=dino", "method.dino.out_dim=64"]))
    client = mlflow.MlflowClient(uri)
    params = client.get_run(run_id).data.params
    assert params["method.name"] == "dino" and params["method.dino.out_dim"] == "64"
    assert not [k for k in params if k.startswith("method.") and k.split(".")[1] not in ("name", "dino")]
    with open(client.download_artifacts(run_id, "config.json", str(tmp_path))) as f:
        assert set(json.load(f)["method"]) == {"name", "dino"}


def test_an_unknown_method_key_lists_that_methods_keys():
    for item, listed in (("method.simclr.temprature=1", "method.simclr.temperature"),
                         ("method.dino.teacher_tmp=1", "method.dino.teacher_temp_warmup")):
        with pytest.raises(SslscaleError, match="unknown config key") as e:
            Config().override([item])
        assert listed in str(e.value) and "method.name" in str(e.value) and "\n" not in str(e.value)


def test_old_flat_method_keys_set_every_section_that_has_them(capsys):
    """The flat keys of the release before (method.temperature) work for one more, with a one-line note: each sets
    its key in every method that has it, as it acted on whichever method ran; renamed ones map to the new name."""
    cfg = Config().override(["method.temperature=0.5", "method.vicreg_cov=2", "method.proj_dim=64"])
    assert (cfg.method.section("simclr").temperature, cfg.method.section("moco_v3").temperature, cfg.method.section("vicreg").cov_coeff) == (0.5, 0.5, 2)
    assert cfg.method.section("byol").proj_dim == cfg.method.section("dino").proj_dim == cfg.method.section("barlow_twins").proj_dim == 64
    err = capsys.readouterr().err
    assert "method.temperature is now method.<name>.temperature (simclr, moco_v3)" in err
    assert "method.vicreg_cov is now method.<name>.cov_coeff (vicreg)" in err
    saved = {"method": {"name": "barlow_twins", "proj_dim": 256, "barlow_lambda": 0.01}}  # an older run's config
    old = Config.from_dict(saved)
    assert (old.method.section("barlow_twins").proj_dim, old.method.section("barlow_twins").lambd) == (256, 0.01)
    assert capsys.readouterr().err == ""  # read back silently


def test_an_old_flat_key_in_a_sweep_space_searches_the_chosen_methods_key():
    from sslscale.sweeps import space

    base = Config().override(["method.name=moco_v3"])
    assert space.renamed(["method.temperature=uniform:0.1:0.3", "optim.lr=choice:1e-3"], base) == \
        ["method.moco_v3.temperature=uniform:0.1:0.3", "optim.lr=choice:1e-3"]


def test_a_run_folder_from_before_plain_data_configs_resumes_with_its_own_values(tmp_path):
    """run.json written at b39cd67 (before config became plain data, issue 28 item 4: every method's section,
    built by make_dataclass) resumes: the same values, the chosen method's section checked, other sections read
    and kept apart."""
    import json
    import shutil
    from pathlib import Path

    from sslscale.training.run_folder import RUN_FILE, resume_config

    shutil.copy(Path(__file__).parent / "golden" / "run_b39cd67.json", tmp_path / RUN_FILE)
    saved = json.loads((tmp_path / RUN_FILE).read_text())["config"]
    cfg = validate(resume_config(str(tmp_path), ["train.steps=50"], uri="sqlite:///unused.db"))
    assert cfg.method.name == "dino" and cfg.method.chosen.out_dim == 512 and cfg.train.steps == 50
    kept = {name: section for name, section in saved["method"].items() if section != {}}  # GPT's has no keys
    assert cfg.to_dict()["method"] == kept  # every section, as saved
    now = json.loads(json.dumps(cfg.to_dict()))  # tuples as JSON holds them
    assert now["model"].pop("init") == ""  # a key added since takes its default: no weights to start from
    assert {k: v for k, v in now.items() if k not in ("method", "train")} == \
        {k: v for k, v in saved.items() if k not in ("method", "train")}
