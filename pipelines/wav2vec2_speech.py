"""wav2vec 2.0 (Baevski et al. 2020) on spoken words: the built-in `tuxpaint_speech` corpus (Tux Paint's picture
names read aloud in 12 languages, 6,447 distinct clips of up to 3 s at 16 kHz, 5,199 in the train split), scored
by spoken-language identification on the held-out pictures' clips (kNN and a linear probe on the mean-pooled
context features, next to a random-init encoder of the same shape and log-mel statistics).

Paper (BASE): 7 conv layers of 512 channels, 12 blocks 768 wide, crops of up to 15.6 s, masks p = 0.065 and
M = 10, G = 2 x V = 320 codes, K = 100 distractors, 400k updates of 1.6 h of audio each, Adam at 5e-4. Scaled here
to 2 CPU cores and ~10 minutes: 4 blocks 128 wide (conv 64 channels), 1 s crops, the paper's masks, 2 x 16 codes,
K = 20, batches of 32 clips, 1,200 steps of AdamW at lr 1e-3 after 50 warm-up steps.
"""
from sslscale.config import Config


def config() -> Config:
    cfg = Config()
    cfg.method.name = "wav2vec2"
    cfg.data.corpus, cfg.data.batch_size = "tuxpaint_speech", 32
    # a view is 40 KB (1 s of int16 and its masks), 150 times a 28 px picture's: a shuffle buffer of 256 views per
    # worker (the default's 2,048 would hold 80 MB each), and 256 MB of views made ahead; with the defaults and 2 s
    # crops a run stalled at step 416 (Ray Data's split waiting on a backpressured operator)
    cfg.data.shuffle_buffer, cfg.data.buffer_mb = 256, 256
    cfg.model.encoder, cfg.model.dim, cfg.model.vit_depth, cfg.model.heads = "wav2vec", 128, 4, 4
    cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.warmup_steps = 1e-3, 0.01, 50
    cfg.engine.zero_stage = 1
    cfg.train.steps, cfg.train.checkpoint_every, cfg.train.health_every = 1200, 400, 100
    cfg.train.probe_samples = 256
    cfg.transfer.target, cfg.transfer.protocols = "tuxpaint_speech", "knn,linear"
    cfg.transfer.batch_size = 128  # clips of up to 3 s: 512 of them take GBs of activations
    return cfg
