"""Recipes: each module has a `config()` returning a complete Config. `RECIPES` maps a name to it."""
from __future__ import annotations

from pipelines import (barlow_fmnist, byol_fmnist, debug, denoising_ae_fmnist, dino_fmnist, mae_fmnist, moco_fmnist,
                       rotation_fmnist, simclr_fmnist, vicreg_fmnist)

RECIPES = {"simclr_fmnist": simclr_fmnist.config, "barlow_fmnist": barlow_fmnist.config,
           "vicreg_fmnist": vicreg_fmnist.config, "byol_fmnist": byol_fmnist.config,
           "moco_fmnist": moco_fmnist.config, "dino_fmnist": dino_fmnist.config, "mae_fmnist": mae_fmnist.config,
           "rotation_fmnist": rotation_fmnist.config, "denoising_ae_fmnist": denoising_ae_fmnist.config,
           "debug": debug.config}


def load_recipe(name: str):
    from sslscale.errors import SslscaleError

    if name not in RECIPES:
        raise SslscaleError(f"unknown recipe {name!r}; known: {', '.join(sorted(RECIPES))}")
    cfg = RECIPES[name]()
    cfg.recipe = name
    return cfg
