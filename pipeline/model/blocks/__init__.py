"""Small building blocks of the fusion network, one concept per file (NCHW modules carry a ``2d`` suffix)."""

from pipeline.model.blocks.band_fusion import BandFusion2d
from pipeline.model.blocks.band_split import BandSplitPredictor2d
from pipeline.model.blocks.conv_blocks import ResBlock2d, StructureUNet2d
from pipeline.model.blocks.cross_band_attention import CrossBandAttention2d
from pipeline.model.blocks.cross_expert_attention import CrossExpertAttention2d
from pipeline.model.blocks.edge import LaplacianEdgeEnhance2d, laplacian_pyramid
from pipeline.model.blocks.fourier_unit import FourierUnit2d
from pipeline.model.blocks.frequency_decomposition import BAND_NAMES, GUIDANCE_GROUPS, FrequencyDecomposition2d
from pipeline.model.blocks.gating import ExpertGating2d, load_balance_loss
from pipeline.model.blocks.hessian import HessianAttention2d
from pipeline.model.blocks.hierarchical import HierarchicalFusion2d
from pipeline.model.blocks.input_embed import ExpertEmbed2d
from pipeline.model.blocks.layer_norm2d import LayerNorm2d
from pipeline.model.blocks.lka import LKA2d, LKABlock2d
from pipeline.model.blocks.lr_residual import LRResidual2d
from pipeline.model.blocks.refine import RefineCNN2d
from pipeline.model.blocks.set_gate import SetGate2d, SetGateMembers
from pipeline.model.blocks.token_attention import TokenAttention, from_tokens, to_tokens

__all__ = [
    "BAND_NAMES",
    "GUIDANCE_GROUPS",
    "BandFusion2d",
    "BandSplitPredictor2d",
    "CrossBandAttention2d",
    "CrossExpertAttention2d",
    "ExpertEmbed2d",
    "ExpertGating2d",
    "FourierUnit2d",
    "FrequencyDecomposition2d",
    "HessianAttention2d",
    "HierarchicalFusion2d",
    "LKA2d",
    "LKABlock2d",
    "LRResidual2d",
    "LaplacianEdgeEnhance2d",
    "LayerNorm2d",
    "RefineCNN2d",
    "ResBlock2d",
    "SetGate2d",
    "SetGateMembers",
    "StructureUNet2d",
    "TokenAttention",
    "laplacian_pyramid",
    "load_balance_loss",
    "from_tokens",
    "to_tokens",
]
