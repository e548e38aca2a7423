"""Training-free ensembles of the experts' SR images: what a challenge team runs instead of a learned fusion.

One frozen :class:`Ensembler` per method (its few parameters + the fingerprints of the experts it was fitted for),
registered by name in :data:`METHODS` (``base``: the type, the registry, :func:`fit`); one :func:`fit` (on a training
cache: :func:`pipeline.evaluation.cached.fit_on_cache`), ``ens.apply(srs)``, and a small JSON file (``files``:
:func:`save` / :func:`load`) that refuses to be used with other experts. Images are float RGB in
[0,1], NCHW: ``srs (B,E,3,H,W)`` (E experts, in the fingerprints' order), ``hr (B,3,H,W)``; :func:`apply` returns
``(B,3,H,W)`` clamped to [0,1].

The methods, one class each: ``mean`` and ``zzpm`` (``averages``: nothing to fit), ``blend``, ``topk`` and ``blend_reg``
(``blends``: fixed linear blends), ``ensir`` (``ensir``). Each class's docstring says what it computes, where it
comes from and how it is fitted. A new method is one registered class (:func:`register`).

Fitting crops ``border`` pixels at each side (the scale, as the NTIRE scoring does); ``mean`` and ``zzpm`` need no
fitting (:func:`fit` just records the experts).
"""

from pipeline.inference.ensemblers.averages import ZZPM, Mean  # the import order is the order of METHODS
from pipeline.inference.ensemblers.base import (
    ENSIR_BIN_WIDTH,
    ENSIR_MIN_PIXELS,
    MAX_WEIGHT,
    METHODS,
    Ensembler,
    EnsemblerError,
    FitOptions,
    apply,
    describe,
    fit,
    method_class,
    register,
)
from pipeline.inference.ensemblers.blends import (
    CV_FOLDS,
    RIDGE_GRID,
    Blend,
    BlendReg,
    BlendStats,
    FixedBlend,
    TopK,
    blend_reg_candidates,
    blend_stats,
    cross_validate_blends,
)
from pipeline.inference.ensemblers.ensir import ENSIR_MAX_BIN_SETS, EnsIR
from pipeline.inference.ensemblers.files import FORMAT, FORMAT_VERSION, load, save

__all__ = [
    "CV_FOLDS",
    "ENSIR_BIN_WIDTH",
    "ENSIR_MAX_BIN_SETS",
    "ENSIR_MIN_PIXELS",
    "FORMAT",
    "FORMAT_VERSION",
    "MAX_WEIGHT",
    "METHODS",
    "RIDGE_GRID",
    "Blend",
    "BlendReg",
    "BlendStats",
    "EnsIR",
    "Ensembler",
    "EnsemblerError",
    "FitOptions",
    "FixedBlend",
    "Mean",
    "TopK",
    "ZZPM",
    "apply",
    "blend_reg_candidates",
    "blend_stats",
    "cross_validate_blends",
    "describe",
    "fit",
    "load",
    "method_class",
    "register",
    "save",
]
