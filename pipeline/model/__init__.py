"""The fusion network (layer 3: imports only pipeline.core, experts and cache): ``FusionNet`` and its config, the
frequency tools and building blocks, and checkpoint folders (``save_pretrained`` / ``load_pretrained``,
``resolve_checkpoint``)."""
