"""One seam per heavy dependency (DESIGN.md principle 2): each is imported by one module only."""
import pathlib
import re

SEAMS = {"ray.data": "stream.py", "ray.train": "train.py", "ray.tune": "tune.py", "deepspeed": "engine.py",
         "mlflow": "tracking.py"}
PLAIN_RAY = "runtime.py"


def _imports(text):
    return re.findall(r"^\s*(?:import|from)\s+([\w.]+)", text, flags=re.M)


def test_heavy_imports_stay_in_their_module():
    pkg = pathlib.Path(__file__).parents[1] / "sslscale"
    for path in pkg.rglob("*.py"):
        for mod in _imports(path.read_text()):
            for seam, owner in SEAMS.items():
                if mod == seam or mod.startswith(seam + "."):
                    assert path.name == owner, f"{path.name} imports {mod}; only {owner} may"
            if mod == "ray":
                assert path.name in (PLAIN_RAY,), f"{path.name} imports plain ray; only {PLAIN_RAY} may"


def test_public_pretrain_stays_a_function_after_its_module_loads():
    import sslscale
    import sslscale.pretraining  # noqa: F401 - importing a submodule sets a package attribute of its name

    assert callable(sslscale.pretrain) and sslscale.pretrain.__module__ == "sslscale"
