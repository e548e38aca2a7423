"""Inference (layer 4): checkpoint + experts → SR in each self-ensemble regime, the training-free ensemblers,
the submission loop shared by scripts/submit.py and the exported NTIRE code. Imports neither cache nor training."""
