"""Sweep recipe: SimCLR on Fashion-MNIST over temperature, crop scale and learning rate, ASHA on the label-free
effective rank, ranked by kNN accuracy. Sized for `make sweep`: 8 trials (the first is the simclr_fmnist recipe's
own values) of at most 270 steps on 2 CPU cores, one at a time, in under 30 minutes. ASHA's rungs fall at
steps 30, 90 and 270 (the last step: no trial is stopped just before its end).

Trials are scored on a seeded 10,000-image subset of the Fashion-MNIST train split (kNN and linear probe fit on
it) against the whole 10,000-image test split, without the random-init and pixel baselines.
"""

RECIPE = "simclr_fmnist"
SIZING = ["train.steps=270", "train.checkpoint_every=90", "train.health_every=10",
          "transfer.train_samples=10000", "transfer.baseline=false",
          "transfer.embedding_map=none"]  # ~8 s of t-SNE a trial; the sweep maps its best trial's embeddings itself
SPACE = ["method.simclr.temperature=loguniform:0.05:0.5", "data.crop_min_scale=uniform:0.08:0.6",
         "optim.lr=loguniform:5e-4:8e-3"]
SAMPLES, SCHEDULER, SEARCH = 8, "asha", "random"
