"""Evaluation (layer 5): SR/HR pairing and the NTIRE scoring, the perceptual metrics, the fusion-vs-peers comparison."""
