"""Tiny random experts for tests of this and later stages (cache, fusion): spandrel's own architecture classes at
toy sizes, saved as ordinary checkpoints and loaded through the normal path (:func:`experts.expert.load_expert`).

Weights are seeded random (parameters perturbed so that zero-initialised blocks such as NAFNet's ``beta``/``gamma``
do something); they are for shapes, plumbing and exactness tests, never for quality — so their specs turn the
loader's probe off (``min_probe_psnr=0``: random weights are far from a bicubic upscale, experts/probe.py).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from spandrel.architectures.Compact import Compact
from spandrel.architectures.DAT import DAT
from spandrel.architectures.HAT import HAT
from spandrel.architectures.NAFNet import NAFNet
from spandrel.architectures.SPAN import SPAN
from torch import nn

from experts.spec import EnsembleSpec, ExpertSpec

__all__ = ["TINY_ARCHITECTURES", "save_tiny_checkpoint", "tiny_ensemble_spec", "tiny_model"]

TINY_ARCHITECTURES = ("HAT", "DAT", "NAFNet", "Compact", "SPAN")


def tiny_model(architecture: str, *, seed: int = 0) -> nn.Module:
    """A toy-sized spandrel model of ``architecture`` (one of :data:`TINY_ARCHITECTURES`) with seeded weights.

    HAT: window 8, embed 16, x4. DAT: embed 32, split [2,4], x4. NAFNet: width 8, 3 levels, x1.
    Compact: 8 features, 2 body convs, x4 (receptive field radius 4 LR pixels). SPAN: 8 channels, x4.
    """
    torch.manual_seed(seed)
    if architecture == "HAT":
        model: nn.Module = HAT(
            img_size=64,
            embed_dim=16,
            depths=(1,),
            num_heads=(2,),
            window_size=8,
            compress_ratio=4,
            squeeze_factor=8,
            mlp_ratio=2.0,
            upscale=4,
            num_feat=16,
        )
    elif architecture == "DAT":
        model = DAT(
            img_size=64, embed_dim=32, split_size=[2, 4], depth=[2], num_heads=[2], expansion_factor=2.0, upscale=4
        )
    elif architecture == "NAFNet":
        model = NAFNet(img_channel=3, width=8, middle_blk_num=1, enc_blk_nums=[1, 1, 1], dec_blk_nums=[1, 1, 1])
    elif architecture == "Compact":
        model = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=4, act_type="prelu")
    elif architecture == "SPAN":
        model = SPAN(num_in_ch=3, num_out_ch=3, feature_channels=8, upscale=4)
    else:
        raise ValueError(f"no tiny model for {architecture!r}; choose from {TINY_ARCHITECTURES}")
    with torch.no_grad():
        for p in model.parameters():  # parameters only: some buffers encode geometry (DAT's rpe_biases)
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def save_tiny_checkpoint(architecture: str, path: str | Path, *, seed: int = 0, key: str | None = None) -> Path:
    """Save :func:`tiny_model` as ``.safetensors`` or ``.pth`` (optionally wrapped as ``{key: state_dict}``)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in tiny_model(architecture, seed=seed).state_dict().items()}
    if p.suffix == ".safetensors":
        if key is not None:
            raise ValueError("safetensors files hold a flat state dict; key must be None")
        save_file(state, str(p))
    else:
        torch.save({key: state} if key is not None else state, p)
    return p


def tiny_ensemble_spec(folder: str | Path, *, nafnet_input: str = "bicubic") -> EnsembleSpec:
    """Tiny HAT / DAT / NAFNet checkpoints written to ``folder`` (absolute paths) and a CPU spec for them, shaped
    like ``configs/experts/hat_dat_nafnet.yaml`` (HAT under ``params_ema``, NAFNet x1 on an SR-sized input)."""
    folder = Path(folder)
    hat = save_tiny_checkpoint("HAT", folder / "hat_tiny.pth", seed=1, key="params_ema")
    dat = save_tiny_checkpoint("DAT", folder / "dat_tiny.safetensors", seed=2)
    naf = save_tiny_checkpoint("NAFNet", folder / "nafnet_tiny.pth", seed=3, key="params")
    return EnsembleSpec(
        scale=4,
        experts=(
            ExpertSpec(
                name="hat",
                checkpoint=str(hat),
                architecture="HAT",
                scale=4,
                checkpoint_key="params_ema",
                min_probe_psnr=0.0,
            ),
            ExpertSpec(name="dat", checkpoint=str(dat), architecture="DAT", scale=4, min_probe_psnr=0.0),
            ExpertSpec(
                name="nafnet",
                checkpoint=str(naf),
                architecture="NAFNet",
                scale=1,
                input=nafnet_input,
                min_probe_psnr=0.0,
            ),
        ),
    )
