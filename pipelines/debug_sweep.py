"""Sweep recipe for tests: the debug recipe (8x8 digits, a tiny ResNet, 6 steps) over temperature and learning
rate; 2 trials, ASHA. Finishes in about a minute."""

RECIPE = "debug"
SIZING = ["transfer.baseline=false"]
SPACE = ["method.simclr.temperature=loguniform:0.05:0.5", "optim.lr=loguniform:1e-3:1e-2"]
SAMPLES, SCHEDULER, SEARCH = 2, "asha", "random"
