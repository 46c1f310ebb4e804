"""The compress stage as a package: teacher → distilled student → ONNX fp32 → quantized → measured → gated → report.

One module per concern, read in the stage's order (:mod:`.stage` is its table of contents):

- :mod:`.teacher`: find, download and load the teacher; check it fits the data.
- :mod:`.students`: the student's architecture, shrunk to the parameter budget, and its distillation fit.
- :mod:`.quantization`: the recipes (``RECIPES``, keyed by recipe name) that turn an fp32 ONNX file into a smaller one,
  and the census that says whether the result is INT8.
- :mod:`.autotune`: ``compress.quantization=auto`` — every recipe tried, the fastest one that passes shipped.
- :mod:`.ship`: one net to its files — ONNX export, parity, quantization — with their rows and gates.
- :mod:`.measure`: the probe arrays, the test score and one-thread latency of PyTorch and ONNX Runtime.
- :mod:`.gates`: drops against a reference, which artifacts may ship, the champion.
- :mod:`.tables`: the report's table, markdown and terminal output (the pipeline report reuses them).
- :mod:`.publish`: metrics, artifacts and registered versions in the tracking store.
- :mod:`.results`: the frozen records the modules hand each other.

This ``__init__`` imports nothing, so the light modules (``tables``, ``results``) load without torch or ONNX.
"""
