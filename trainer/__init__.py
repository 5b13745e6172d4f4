"""HyQuT trainer: the hybrid LLaMA-style model, its data, training and generation.

    model/   the architecture: config, the plain decoder, its conversion to the quantum projection
             (or its classical control) on the run's circuits, accounting, transformers' terms
    data/    text to tokens: corpora, the tokenizer, batches
    run/     a training run: its settings, the loop and its state, checkpoints, hardware cost,
             metrics, report, threads
    main.py, generate.py, export.py: the entry points (python -m trainer.main, ...)

Imports point one way: entry points -> run -> model -> data (pyproject.toml's contracts). This
package and trainer.run import nothing at all: an entry point calls trainer.run.threads before
torch is loaded.
"""
