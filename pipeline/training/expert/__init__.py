"""Training one ×4 SR expert: config, the bundled zoo's recipe, trainer, validation, zoo export."""
