"""Optional perceptual-track refiner: TSD-SR one-step diffusion refinement of the fused SR image.

The only package of the project that imports diffusers/peft. Importing it (config + errors) is cheap; the model
lives in :mod:`pipeline.refiner.tsdsr`, whose import pulls in diffusers (tens of seconds on a busy CPU)::

    from pipeline.core.config import load_config
    from pipeline.refiner import RefinerConfig
    from pipeline.refiner.tsdsr import TSDSRRefiner

    cfg = load_config(RefinerConfig, "configs/refiner/tsdsr.yaml", overrides)
    refiner = TSDSRRefiner.from_config(cfg)      # checks files, loads SD3, merges the TSD-SR LoRA
    out = refiner(sr)                            # (B, 3, H, W) in [0, 1] -> (B, 3, H, W) in [0, 1]

See pipeline/refiner/README.md for the weights to download.
"""

from pipeline.refiner.config import RefinerConfig
from pipeline.refiner.errors import (
    LoRAFormatError,
    RefinerError,
    RefinerFileNotFoundError,
    RefinerWeightsError,
)

__all__ = ["LoRAFormatError", "RefinerConfig", "RefinerError", "RefinerFileNotFoundError", "RefinerWeightsError"]
