"""Training losses for the fusion network, and the weighted combination used by a training stage.

All image losses take ``sr``/``hr`` (B,3,H,W) float in [0,1] and return a scalar (mean over the batch):

* :func:`l1_loss`, :func:`charbonnier_loss` (ε = 1e-3)
* :func:`mse_y_loss` — mean squared error on the scored channel (BT.601 Y with the 16–235 offsets, on [0,1]): the
  loss whose optimum is the PSNR the challenge measures (L1/Charbonnier pull towards the median instead; a
  least-squares blend start is stationary for this one)
* :func:`psnr_y_loss` — minus the mean over the batch of each sample's PSNR on that channel (dB): the challenge
  *averages PSNR over images*, so a sample's squared error counts in proportion to 1/its MSE (a gain of x dB on a
  smooth crop counts as much as on a textured one); Y-MSE instead lets the crops with the largest errors dominate
* :func:`fft_loss` — L1 between the stacked real/imaginary parts of the 2-D FFTs (SFHformer uses weight 0.1),
  with optional high-frequency emphasis ``1 + hf_weight · radius``
* :func:`swt_loss` — L1 between the sub-bands of a 2-level stationary (undecimated) Haar wavelet transform
* :func:`ssim_loss` — 1 − SSIM (11×11 Gaussian, σ = 1.5, per RGB channel, differentiable)
* :func:`sobel_loss` — L1 between Sobel gradients (x and y)
* :class:`VGGPerceptualLoss` — L1 between VGG19 features; the weights come from a local file (never downloaded)

The gate load-balancing loss comes from the fusion model itself (its aux output) and is weighted here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.core.config import NonNegFloat
from pipeline.core.metrics import Y_WEIGHTS

__all__ = [
    "LossWeights",
    "l1_loss",
    "gate_oracle_loss",
    "charbonnier_loss",
    "mse_y_loss",
    "psnr_y_loss",
    "fft_loss",
    "swt_loss",
    "swt_haar",
    "ssim_loss",
    "sobel_loss",
    "VGGPerceptualLoss",
    "CombinedLoss",
    "LossInputs",
    "TERMS",
]


@dataclass(frozen=True)
class LossWeights:
    """Weights of each loss term in one training stage (0 = off)."""

    l1: NonNegFloat = 0.0
    charbonnier: NonNegFloat = 1.0
    mse_y: NonNegFloat = 0.0  # MSE on BT.601 Y (the scored channel); ~1e-3 in size: weight it when mixing
    psnr_y: NonNegFloat = 0.0  # −(mean per-sample PSNR on BT.601 Y) in dB; ~−30 in size
    fft: NonNegFloat = 0.0
    fft_hf_weight: NonNegFloat = 0.0  # high-frequency emphasis inside the FFT loss
    swt: NonNegFloat = 0.0
    ssim: NonNegFloat = 0.0
    sobel: NonNegFloat = 0.0
    # Gate load-balancing (the MoE auxiliary loss). Off by default: it pushes every expert towards an equal share,
    # which for experts of unequal quality fights the fit (CRAFT/DITN/SPAN at 0.01: gates held at 0.26/0.41/0.33,
    # +0.004 dB over CRAFT on Set14; at 0: 0.66/0.29/0.05 and +0.022 dB, docs/RESULTS.md).
    balance: NonNegFloat = 0.0
    gate_oracle: NonNegFloat = (
        0.0  # gates vs the per-pixel oracle expert (cross-entropy, weighted by what the choice costs)
    )
    perceptual: NonNegFloat = 0.0


def l1_loss(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    return (sr - hr).abs().mean()


def gate_oracle_loss(gates: torch.Tensor, srs: torch.Tensor, hr: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Cross-entropy of the per-pixel gates against the oracle expert — at each pixel the one whose Y (BT.601, the
    scored channel) is nearest the HR — weighted by how much the choice matters there (worst − best expert's |ΔY|),
    so flat regions where every expert agrees do not count. ``gates (B,E,H,W)`` (softmax over E), ``srs (B,E,3,H,W)``,
    ``hr (B,3,H,W)``; a scalar."""
    w = srs.new_tensor(Y_WEIGHTS) / 255.0  # BT.601 luma on [0,1]; the 16/255 offset cancels in differences
    err = ((srs * w.view(1, 1, 3, 1, 1)).sum(dim=2) - (hr * w.view(1, 3, 1, 1)).sum(dim=1, keepdim=True)).abs()
    label = err.argmin(dim=1, keepdim=True)  # (B,1,H,W)
    weight = (err.amax(dim=1) - err.amin(dim=1)).detach()  # (B,H,W)
    nll = -torch.log(gates.clamp_min(eps)).gather(1, label).squeeze(1)  # (B,H,W)
    return (weight * nll).sum() / weight.sum().clamp_min(eps)


def _y_diff(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """``(B,H,W)``: the difference of the BT.601 Y channels on [0,1] (the 16/255 offset cancels in it)."""
    w = sr.new_tensor(Y_WEIGHTS).view(1, 3, 1, 1) / 255.0
    return ((sr - hr) * w).sum(dim=1)


def mse_y_loss(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    return _y_diff(sr, hr).square().mean()


def psnr_y_loss(sr: torch.Tensor, hr: torch.Tensor, *, floor_db: float = 60.0) -> torch.Tensor:
    """−(mean over the batch of each sample's PSNR on BT.601 Y, in dB, no border crop): the quantity the challenge
    averages over images. Each sample's MSE is floored at the ``floor_db`` PSNR so a perfect crop stays finite."""
    mse = _y_diff(sr, hr).square().flatten(1).mean(dim=1)  # (B,)
    return (10.0 * torch.log10(mse + 10.0 ** (-floor_db / 10.0))).mean()


def charbonnier_loss(sr: torch.Tensor, hr: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    return torch.sqrt((sr - hr) ** 2 + eps * eps).mean()


def fft_loss(sr: torch.Tensor, hr: torch.Tensor, *, hf_weight: float = 0.0) -> torch.Tensor:
    fs = torch.fft.rfft2(sr.float(), norm="ortho")
    fh = torch.fft.rfft2(hr.float(), norm="ortho")
    diff = torch.view_as_real(fs - fh).abs()  # (B,C,H,W//2+1,2): real/imag stacked
    if hf_weight:
        h, w = sr.shape[-2:]
        fy = torch.fft.fftfreq(h, device=sr.device).abs()[:, None]
        fx = torch.fft.rfftfreq(w, device=sr.device)[None, :]
        radius = torch.sqrt(fy * fy + fx * fx) / (0.5 * 2**0.5)  # 0 at DC, 1 at the corner frequency
        diff = diff * (1.0 + hf_weight * radius)[..., None]
    return diff.mean()


def swt_haar(x: torch.Tensor, *, levels: int = 2) -> list[torch.Tensor]:
    """Stationary Haar wavelet transform (no decimation): ``[LH1, HL1, HH1, ..., LL_levels]`` each (B,C,H,W)."""
    b, c, h, w = x.shape
    lo = torch.tensor([0.5, 0.5], dtype=x.dtype, device=x.device)
    hi = torch.tensor([0.5, -0.5], dtype=x.dtype, device=x.device)
    bands = []
    ll = x
    for j in range(levels):
        d = 2**j  # à trous: the filters are dilated at each level
        kernels = torch.stack([torch.outer(a, b_) for a, b_ in ((lo, lo), (lo, hi), (hi, lo), (hi, hi))])  # (4,2,2)
        weight = kernels[:, None].repeat(c, 1, 1, 1)  # (4C,1,2,2)
        padded = F.pad(ll, (0, d, 0, d), mode="replicate")
        out = F.conv2d(padded, weight, dilation=d, groups=c).view(b, c, 4, h, w)
        ll = out[:, :, 0]
        bands.extend([out[:, :, 1], out[:, :, 2], out[:, :, 3]])
    bands.append(ll)
    return bands


def swt_loss(sr: torch.Tensor, hr: torch.Tensor, *, levels: int = 2) -> torch.Tensor:
    return sum((a - b).abs().mean() for a, b in zip(swt_haar(sr, levels=levels), swt_haar(hr, levels=levels))) / (
        3 * levels + 1
    )


def _gaussian_kernel(size: int = 11, sigma: float = 1.5, *, device=None, dtype=None) -> torch.Tensor:
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - (size - 1) / 2) ** 2) / (2 * sigma * sigma))
    g = g / g.sum()
    return torch.outer(g, g).to(device=device, dtype=dtype)


def ssim_loss(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """1 − mean SSIM over RGB channels (valid region; data range 1)."""
    c = sr.shape[1]
    win = _gaussian_kernel(device=sr.device, dtype=sr.dtype)[None, None].repeat(c, 1, 1, 1)
    c1, c2 = 0.01**2, 0.03**2
    mu1, mu2 = F.conv2d(sr, win, groups=c), F.conv2d(hr, win, groups=c)
    s11 = F.conv2d(sr * sr, win, groups=c) - mu1 * mu1
    s22 = F.conv2d(hr * hr, win, groups=c) - mu2 * mu2
    s12 = F.conv2d(sr * hr, win, groups=c) - mu1 * mu2
    ssim = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1 * mu1 + mu2 * mu2 + c1) * (s11 + s22 + c2))
    return 1.0 - ssim.mean()


def _sobel(x: torch.Tensor) -> torch.Tensor:
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device, dtype=x.dtype)
    k = torch.stack([kx, kx.T])[:, None].repeat(x.shape[1], 1, 1, 1)  # (2C,1,3,3)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=x.shape[1])  # (B,2C,H,W)


def sobel_loss(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    return (_sobel(sr) - _sobel(hr)).abs().mean()


class VGGPerceptualLoss(nn.Module):
    """L1 between VGG19 feature maps (relu1_2, relu2_2, relu3_4, relu4_4, relu5_4 by default).

    ``weights_path`` is a local torchvision ``vgg19`` state dict (``.pth`` loaded with ``weights_only=True`` or
    ``.safetensors``), e.g. ``vgg19-dcbb9e9d.pth``. A missing file is an error naming it — nothing is downloaded.
    """

    # indices in torchvision's vgg19.features of the ReLU outputs
    LAYERS = {"relu1_2": 3, "relu2_2": 8, "relu3_4": 17, "relu4_4": 26, "relu5_4": 35}

    def __init__(
        self,
        *,
        weights_path: str | os.PathLike,
        layers: tuple[str, ...] = ("relu1_2", "relu2_2", "relu3_4", "relu4_4", "relu5_4"),
        layer_weights: tuple[float, ...] = (0.1, 0.1, 1.0, 1.0, 1.0),
    ) -> None:
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"VGG19 weights not found: {path}. Put torchvision's vgg19 ImageNet state dict there "
                "(e.g. vgg19-dcbb9e9d.pth) or set the perceptual loss weight to 0."
            )
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        # Only the convolutional part is used: the file's classifier.* tensors (if any) are dropped explicitly, and
        # every features.* tensor must be present with the right shape (strict load).
        bad = [k for k in state if not k.startswith(("features.", "classifier."))]
        if bad:
            raise ValueError(f"{path}: not a torchvision vgg19 state dict (unexpected keys {bad[:5]})")
        state = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
        with torch.device("meta"):  # vgg19().features, without building (and randomly initialising) anything
            features = make_layers(cfgs["E"], batch_norm=False)
        features.load_state_dict(state, strict=True, assign=True)
        unknown = [n for n in layers if n not in self.LAYERS]
        if unknown or len(layers) != len(layer_weights):
            raise ValueError(f"bad VGG layers {layers} / weights {layer_weights}")
        last = max(self.LAYERS[n] for n in layers)
        self.features = features[: last + 1].eval().requires_grad_(False)
        self.taps = tuple(self.LAYERS[n] for n in layers)
        self.layer_weights = layer_weights
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def _feats(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x)
        return out

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        fs, fh = self._feats(sr), self._feats(hr.detach())
        return sum(w * (a - b).abs().mean() for w, a, b in zip(self.layer_weights, fs, fh))

    def train(self, mode: bool = True) -> VGGPerceptualLoss:  # the feature extractor always stays in eval mode
        super().train(mode)
        self.features.eval()
        return self


@dataclass(frozen=True)
class LossInputs:
    """What a loss term may read: the fused ``sr`` and ``hr (B,3,H,W)``, the stage's weights, and what the model and
    the trainer provide besides (each term says what it needs)."""

    sr: torch.Tensor
    hr: torch.Tensor
    weights: LossWeights
    balance: torch.Tensor | None = None  # the gates' load-balancing loss (None: the model has no gates)
    gates: torch.Tensor | None = None  # (B,E,H,W), for gate_oracle
    srs: torch.Tensor | None = None  # (B,E,3,H,W), for gate_oracle
    perceptual: VGGPerceptualLoss | None = None


def _gate_oracle(x: LossInputs) -> torch.Tensor:
    if x.gates is None or x.srs is None:
        raise ValueError("the stage weights gate_oracle but the model has no gates (gating disabled?)")
    return gate_oracle_loss(x.gates, x.srs, x.hr)


def _perceptual(x: LossInputs) -> torch.Tensor:
    if x.perceptual is None:
        raise ValueError("the stage weights the perceptual loss but no VGG19 weights were configured")
    return x.perceptual(x.sr, x.hr)


# the loss terms by name (the LossWeights field that weighs each), in the order they are summed; a term that returns
# None is left out (balance, when the model has no gates). fft_hf_weight is fft's parameter, not a term.
TERMS: dict[str, Callable[[LossInputs], torch.Tensor | None]] = {
    "l1": lambda x: l1_loss(x.sr, x.hr),
    "charbonnier": lambda x: charbonnier_loss(x.sr, x.hr),
    "mse_y": lambda x: mse_y_loss(x.sr, x.hr),
    "psnr_y": lambda x: psnr_y_loss(x.sr, x.hr),
    "fft": lambda x: fft_loss(x.sr, x.hr, hf_weight=x.weights.fft_hf_weight),
    "swt": lambda x: swt_loss(x.sr, x.hr),
    "ssim": lambda x: ssim_loss(x.sr, x.hr),
    "sobel": lambda x: sobel_loss(x.sr, x.hr),
    "balance": lambda x: x.balance,
    "gate_oracle": _gate_oracle,
    "perceptual": _perceptual,
}


class CombinedLoss(nn.Module):
    """Weighted sum of the terms of :class:`LossWeights` (:data:`TERMS`); returns ``(total, {term: value})`` (values
    detached)."""

    def __init__(self, *, perceptual: VGGPerceptualLoss | None = None) -> None:
        super().__init__()
        self.perceptual = perceptual

    def forward(
        self,
        sr: torch.Tensor,
        hr: torch.Tensor,
        weights: LossWeights,
        *,
        balance: torch.Tensor | None = None,
        gates: torch.Tensor | None = None,  # (B,E,H,W), for gate_oracle
        srs: torch.Tensor | None = None,  # (B,E,3,H,W), for gate_oracle
    ) -> tuple[torch.Tensor, dict[str, float]]:
        inputs = LossInputs(
            sr=sr, hr=hr, weights=weights, balance=balance, gates=gates, srs=srs, perceptual=self.perceptual
        )
        terms: dict[str, torch.Tensor] = {}
        for name, term in TERMS.items():
            if getattr(weights, name):
                value = term(inputs)
                if value is not None:
                    terms[name] = value
        if not terms:
            raise ValueError(f"every loss weight is zero: {weights}")
        total = sum(getattr(weights, k) * v for k, v in terms.items())
        return total, {k: float(v.detach()) for k, v in terms.items()}
