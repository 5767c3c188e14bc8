"""DINO (Caron et al. 2021) on Fashion-MNIST, sized like simclr_fmnist (~6 minutes on 2 CPU cores for SimCLR;
DINO's local crops and teacher pass add to that).

Paper (ResNet-50 / ViT-S): 2 global crops at 224 (area 0.4-1) and 6-10 local crops at 96 (area 0.05-0.4), head
2048-2048-256 -> 65536 prototypes, student temperature 0.1, teacher 0.04 -> 0.07 over 30 epochs, centre momentum
0.9, teacher momentum 0.996 -> 1 (cosine), AdamW (lr 5e-4 x batch/256), weight decay 0.04 -> 0.4 (cosine), the
last layer frozen for the first epoch, 100-800 epochs. Scaled here: the small ResNet of simclr_fmnist, 2 global
crops at 28 px (area 0.4-1) and 4 local crops at 14 px (area 0.05-0.4), head 512-512-128 -> 1024 prototypes,
the teacher temperature warmed up over the first quarter of the run, the last layer frozen for its first 1% (the
paper's 1 of 100 epochs), base momentum 0.99 (as byol_fmnist: 0.996 averages over most of this short run), AdamW
at simclr_fmnist's lr with the paper's weight decay schedule.
"""
from pipelines import simclr_fmnist
from sslscale.config import Config


def config() -> Config:
    cfg = simclr_fmnist.config()
    cfg.method.name = "dino"
    cfg.data.crop_min_scale = 0.4
    cfg.data.n_local, cfg.data.local_size = 4, 14
    cfg.data.local_min_scale, cfg.data.local_max_scale = 0.05, 0.4
    dino = cfg.method.section("dino")
    dino.proj_hidden, dino.proj_dim, dino.out_dim = 512, 128, 1024
    dino.student_temp, dino.center_momentum = 0.1, 0.9
    dino.teacher_temp_start, dino.teacher_temp = 0.04, 0.07
    dino.teacher_temp_warmup = cfg.train.steps // 4
    dino.freeze_last_layer = cfg.train.steps // 100
    dino.momentum, dino.momentum_final = 0.99, 1.0
    cfg.optim.weight_decay, cfg.optim.weight_decay_end = 0.04, 0.4
    return cfg
