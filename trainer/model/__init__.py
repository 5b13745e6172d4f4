"""The model: what a checkpoint holds and how it is built (docs/design.md, "The model")."""
