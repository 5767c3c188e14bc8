"""Evaluation of a trained encoder: `transfer` (frozen features: kNN, linear probe, baselines, embedding map) and
`finetune` (fine-tuning and the from-scratch baseline, through the engine)."""
