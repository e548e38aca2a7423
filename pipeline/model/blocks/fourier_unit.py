"""Global FFT branch in the style of SFHformer's Fourier unit (written from the paper's description).

x → LayerNorm → 1×1 to ``hidden`` → remove the per-channel spatial mean (the DC term grows with image size, so it
bypasses the spectral path) → ``rfft2`` → real and imaginary parts stacked on channels (2·hidden) →
+ frequency positional encoding (depth-wise 3×3 conv over the frequency grid) → frequency dynamic convolution
(K 1×1 kernels mixed per frequency by softmax weights predicted from the spectrum) → GELU → ``irfft2`` → + mean
→ zero-initialised 1×1 back to C, added to x. Every frequency sees the whole image: a global receptive field at
O(HW log HW) cost.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.model.blocks.layer_norm2d import LayerNorm2d

__all__ = ["FourierUnit2d"]


class FourierUnit2d(nn.Module):
    """Residual global branch: x (B,C,H,W) → x + out(spectral(x))."""

    def __init__(self, *, channels: int, hidden: int, kernels: int) -> None:
        super().__init__()
        f = 2 * hidden
        self.hidden = hidden
        self.kernels = kernels
        self.norm = LayerNorm2d(channels=channels)
        self.inp = nn.Conv2d(channels, hidden, 1)
        self.freq_pos = nn.Conv2d(f, f, 3, padding=1, groups=f)
        self.kernel_logits = nn.Conv2d(f, kernels, 1)
        self.dyn_weight = nn.Parameter(torch.empty(kernels * f, f, 1, 1))
        self.dyn_bias = nn.Parameter(torch.zeros(kernels * f))
        nn.init.kaiming_uniform_(self.dyn_weight, a=math.sqrt(5))
        self.out = nn.Conv2d(hidden, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def spectral(self, y: Tensor) -> Tensor:
        """y (B,hidden,H,W) → (B,hidden,H,W) through the frequency domain."""
        b, c, h, w = y.shape
        mean = y.mean(dim=(2, 3), keepdim=True)
        spec = torch.fft.rfft2(y - mean, norm="ortho")  # (B,c,H,W//2+1) complex
        z = torch.cat([spec.real, spec.imag], dim=1)  # (B,2c,H,Wf)
        z = z + self.freq_pos(z)
        mix = self.kernel_logits(z).softmax(dim=1)  # (B,K,H,Wf)
        zk = F.conv2d(z, self.dyn_weight, self.dyn_bias)  # (B,K·2c,H,Wf)
        wf = z.shape[-1]
        z = (zk.reshape(b, self.kernels, 2 * c, h, wf) * mix.unsqueeze(2)).sum(dim=1)
        z = F.gelu(z)
        spec = torch.complex(z[:, :c], z[:, c:])
        return torch.fft.irfft2(spec, s=(h, w), norm="ortho") + mean

    def forward(self, x: Tensor) -> Tensor:
        return x + self.out(self.spectral(self.inp(self.norm(x))))
