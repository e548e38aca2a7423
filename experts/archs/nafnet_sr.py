"""NAFNetSR: NAFNet blocks at LR resolution + a pixel-shuffle ×s tail + a bicubic skip — a small ×4 SR expert.

spandrel's NAFNet is a ×1 restorer (a U-Net without an upsampler). For ×4 SR at ~100–400K parameters there are two
ways to use NAFNet blocks:

1. **blocks on the LR grid, pixel-shuffle tail** (this module; the design of NAFSSR, Chu et al., CVPRW 2022, whose
   SR network is NAFBlocks at LR + pixel shuffle + an interpolated-input skip), or
2. NAFNet on the bicubic ×4 upscale (pre-upsampling, like SRCNN/VDSR).

(1) is the better choice at this size: every block runs on 16× fewer pixels, so for the same compute (the budget of
a few CPU-hours of training, and of inference on 2K images) it affords ~16× more block evaluations; the LR pixels are
the real measurements rather than a smooth interpolation of them; and a 3-level U-Net on SR-sized images would
spend its first two levels just getting back to LR resolution. This is the lesson of FSRCNN/ESPCN over SRCNN and of
every lightweight SR winner since (SPAN, RLFN, …): extract at LR, upsample last. The bicubic skip makes the network
learn only the residual over bicubic, and its last conv starts at zero, so a fresh model *is* the bicubic upscale
(≈ 28.4 dB on Set5) instead of noise — this matters for training budgets of a few CPU-hours.

Layout (the conventional SwinIR-family names, so the expert loader's default hook ``conv_after_body`` applies)::

    f = conv_first(lr)                              # (B,W,H,W_)   3×3
    f = conv_after_body(body(f)) + f                # num_blocks × NAFBlock2d, 3×3 conv, long skip
    sr = upsample(f) + bicubic(lr, ×upscale)        # 3×3 conv to 3·s² channels, PixelShuffle(s)

Every hyper-parameter can be read back from the weights' shapes (:class:`NAFNetSRArch`), so a plain state dict of
this model loads through ``experts.loading`` like any spandrel architecture.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from spandrel import Architecture, ImageModelDescriptor, StateDict
from spandrel.util import KeyCondition, get_seq_len, store_hyperparameters
from torch import nn

from experts.archs.naf_block2d import NAFBlock2d

__all__ = ["NAFNetSR", "NAFNetSRArch"]


@store_hyperparameters()
class NAFNetSR(nn.Module):
    """(B,C,H,W) in [0,1] → (B,C,sH,sW), s = ``upscale``. See the module docstring."""

    hyperparameters: dict[str, object]  # set per instance by spandrel's @store_hyperparameters (the loader reads it)

    def __init__(
        self,
        *,
        channels: int = 3,
        width: int = 48,
        num_blocks: int = 12,
        dw_expand: int = 2,
        ffn_expand: int = 2,
        upscale: int = 4,
    ) -> None:
        super().__init__()
        if min(channels, width, num_blocks, dw_expand, ffn_expand, upscale) < 1:
            raise ValueError("NAFNetSR: every hyper-parameter must be >= 1")
        self.upscale = upscale
        self.conv_first = nn.Conv2d(channels, width, 3, padding=1)
        self.body = nn.Sequential(
            *(NAFBlock2d(channels=width, dw_expand=dw_expand, ffn_expand=ffn_expand) for _ in range(num_blocks))
        )
        self.conv_after_body = nn.Conv2d(width, width, 3, padding=1)
        self.upsample = nn.Sequential(
            nn.Conv2d(width, channels * upscale * upscale, 3, padding=1), nn.PixelShuffle(upscale)
        )
        nn.init.zeros_(
            self.upsample[0].weight
        )  # a fresh model is exactly the bicubic upscale: the residual starts at 0
        nn.init.zeros_(self.upsample[0].bias)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        f = self.conv_first(lr)  # (B,W,H,W_)
        f = self.conv_after_body(self.body(f)) + f  # (B,W,H,W_)
        base = F.interpolate(lr, scale_factor=self.upscale, mode="bicubic", align_corners=False)  # (B,C,sH,sW_)
        return self.upsample(f) + base


class NAFNetSRArch(Architecture[NAFNetSR]):
    """spandrel detection + loading of :class:`NAFNetSR` state dicts (every hyper-parameter from the shapes)."""

    def __init__(self) -> None:
        super().__init__(
            id="NAFNetSR",
            detect=KeyCondition.has_all(
                "conv_first.weight",
                "body.0.norm1.weight",
                "body.0.conv1.weight",
                "body.0.conv2.weight",
                "body.0.sca.1.weight",
                "body.0.conv4.weight",
                "body.0.conv5.weight",
                "body.0.beta",
                "body.0.gamma",
                "conv_after_body.weight",
                "upsample.0.weight",
            ),
        )

    def load(self, state_dict: StateDict) -> ImageModelDescriptor[NAFNetSR]:
        width, channels = state_dict["conv_first.weight"].shape[:2]
        num_blocks = get_seq_len(state_dict, "body")
        dw_expand = state_dict["body.0.conv1.weight"].shape[0] // width
        ffn_expand = state_dict["body.0.conv4.weight"].shape[0] // width
        upscale = math.isqrt(state_dict["upsample.0.weight"].shape[0] // channels)
        model = NAFNetSR(
            channels=channels,
            width=width,
            num_blocks=num_blocks,
            dw_expand=dw_expand,
            ffn_expand=ffn_expand,
            upscale=upscale,
        )
        return ImageModelDescriptor(
            model,
            state_dict,  # loaded with load_state_dict(strict=True) by the descriptor
            architecture=self,
            purpose="SR" if upscale > 1 else "Restoration",
            tags=[f"{width}w", f"{num_blocks}b"],
            supports_half=False,  # not tested in fp16 (like spandrel's NAFNet)
            supports_bfloat16=True,
            scale=upscale,
            input_channels=channels,
            output_channels=channels,
        )
