"""The project's own expert architectures, loadable by ``experts.loading`` exactly like spandrel's.

Each architecture is an ``nn.Module`` with a keyword-only constructor decorated with spandrel's
``@store_hyperparameters`` (the loader reads ``model.hyperparameters``), plus a spandrel :class:`~spandrel.Architecture`
that detects its state dicts and reads every hyper-parameter back from the tensor shapes. :data:`ARCHITECTURES`
lists those; ``experts.loading`` detects them before spandrel's own (``EXPERT_REGISTRY``).

* ``NAFNetSR`` (``nafnet_sr.py``): NAFNet blocks at LR resolution + pixel-shuffle ×4 tail + bicubic skip.
"""

from experts.archs.nafnet_sr import NAFNetSR, NAFNetSRArch

__all__ = ["ARCHITECTURES", "NAFNetSR", "NAFNetSRArch"]

ARCHITECTURES = (NAFNetSRArch(),)
