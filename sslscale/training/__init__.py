"""Training: a pretext method under DeepSpeed on Ray Train workers, and what a run leaves behind.

`engine` wraps a method in DeepSpeed (device, precision, the step, checkpoints), `optim` builds AdamW/LARS, `train`
is the per-worker loop and the TorchTrainer launch, `checkpoint` a checkpoint folder's own files, `run_folder` a run
folder's run.json, `lease` which process writes a run folder, `health` the label-free metrics and `spectrum` their
probe-set spectrum in the loop, `export` encoders as safetensors, `faults` fault injection for the reliability
tests, `progress` the live progress line.
"""
