"""``dlforge bench``: side-by-side benchmarks of dlforge against plain PyTorch, against itself and its targets.

One module per benchmark, each with ``run(ctx) -> BenchResult``; :mod:`pipelines.benchmarks.runner` runs the chosen
ones and writes ``benchmarks.json`` and ``benchmarks.md``. Every timing is a ratio of two variants measured in the
same process run, interleaved repeat by repeat, reported as the median over the repeats (the machine is shared and
noisy; only ratios taken side by side mean anything). Importing this package imports nothing heavy.
"""
