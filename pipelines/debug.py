"""The CPU debug recipe: scikit-learn's 8x8 digits, a tiny ResNet, a handful of steps; finishes in seconds.

Tests run real Ray, DeepSpeed and MLflow on it."""
from sslscale.config import Config


def config() -> Config:
    cfg = Config()
    cfg.data.corpus = "digits"
    cfg.data.batch_size, cfg.data.shuffle_buffer = 64, 256
    cfg.model.widths, cfg.model.depths = (8, 16), (1, 1)
    cfg.set_for_methods(proj_hidden=32, proj_dim=16)  # small heads whichever method.name a test picks
    cfg.optim.warmup_steps = 2
    cfg.train.steps, cfg.train.checkpoint_every, cfg.train.health_every = 6, 3, 2
    cfg.train.log_every = 1  # tests check every step's loss
    cfg.train.max_failures = 0
    cfg.transfer.target = "digits"
    cfg.transfer.embedding_map = "pca"  # t-SNE costs ~1 s here, in every test run that scores
    return cfg
