"""The only code that knows every stage: CLI, config, stages (train, tune, compress, export, run), tracking."""

__version__ = "0.1.0"
