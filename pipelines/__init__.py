"""Recipes: each module has a `config()` returning a complete Config. `RECIPES` maps a name to it.

Sweep recipes are data: a base recipe (RECIPE), the overrides that size its trials (SIZING), a search space
(SPACE, KEY=DIST strings, see sslscale/sweeps/space.py) and defaults for the sweep's options. `SWEEPS` maps a name
to one."""
from __future__ import annotations

from pipelines import (barlow_fmnist, byol_fmnist, clip_openclipart, debug, debug_sweep, denoising_ae_fmnist,
                       dino_fmnist, gpt_text, mae_fmnist, mlm_openclipart, mlm_text, moco_fmnist, rotation_fmnist, simclr_fmnist, simclr_fmnist_sweep,
                       simcse_text, sop_text, vicreg_fmnist, wav2vec2_speech)

RECIPES = {"simclr_fmnist": simclr_fmnist.config, "barlow_fmnist": barlow_fmnist.config,
           "vicreg_fmnist": vicreg_fmnist.config, "byol_fmnist": byol_fmnist.config,
           "moco_fmnist": moco_fmnist.config, "dino_fmnist": dino_fmnist.config, "mae_fmnist": mae_fmnist.config,
           "rotation_fmnist": rotation_fmnist.config, "denoising_ae_fmnist": denoising_ae_fmnist.config,
           "mlm_text": mlm_text.config, "mlm_openclipart": mlm_openclipart.config, "gpt_text": gpt_text.config,
           "sop_text": sop_text.config, "simcse_text": simcse_text.config,
           "wav2vec2_speech": wav2vec2_speech.config, "clip_openclipart": clip_openclipart.config,
           "debug": debug.config}
SWEEPS = {"simclr_fmnist_sweep": simclr_fmnist_sweep, "debug_sweep": debug_sweep}


def load_recipe(name: str):
    from sslscale.errors import SslscaleError

    if name not in RECIPES:
        raise SslscaleError(f"unknown recipe {name!r}; known: {', '.join(sorted(RECIPES))} "
                            f"(sweeps: {', '.join(sorted(SWEEPS))})")
    cfg = RECIPES[name]()
    cfg.recipe = name
    return cfg


def load_sweep(name: str) -> dict:
    """{"recipe", "sizing", "space", "samples", "scheduler", "search"} of a sweep recipe; a plain recipe gives an
    empty space and sizing (the sweep's --space then says what to search)."""
    if name in SWEEPS:
        m = SWEEPS[name]
        return {"recipe": m.RECIPE, "sizing": list(m.SIZING), "space": list(m.SPACE), "samples": m.SAMPLES,
                "scheduler": m.SCHEDULER, "search": m.SEARCH}
    load_recipe(name)  # one line naming the known recipes when it is neither
    return {"recipe": name, "sizing": [], "space": [], "samples": 8, "scheduler": "asha", "search": "random"}
