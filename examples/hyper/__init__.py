"""Parts of the `examples/train_cli.py` program, each declaring its own hyperparameters."""
