"""HyQuT trainer: the hybrid LLaMA-style model, its data, training and generation."""
