"""A training run: its settings, the loop and its state, the run directory, hardware cost, metrics
and report (docs/design.md, "The trainer"). Imports nothing: trainer.run.threads must be
importable before torch is."""
