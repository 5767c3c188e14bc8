"""Recipes: each module has a `config()` returning a complete Config. `RECIPES` maps a name to it."""
from __future__ import annotations

from pipelines import barlow_fmnist, byol_fmnist, debug, moco_fmnist, simclr_fmnist, vicreg_fmnist

RECIPES = {"simclr_fmnist": simclr_fmnist.config, "barlow_fmnist": barlow_fmnist.config,
           "vicreg_fmnist": vicreg_fmnist.config, "byol_fmnist": byol_fmnist.config,
           "moco_fmnist": moco_fmnist.config, "debug": debug.config}


def load_recipe(name: str):
    from sslscale.errors import SslscaleError

    if name not in RECIPES:
        raise SslscaleError(f"unknown recipe {name!r}; known: {', '.join(sorted(RECIPES))}")
    cfg = RECIPES[name]()
    cfg.recipe = name
    return cfg
