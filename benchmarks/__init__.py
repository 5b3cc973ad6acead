"""Benchmarks of linop against its references (dattri 0.2.0, curvlinops).

Each benchmark is a module runnable with ``python -m benchmarks.<name>``; shared timing,
machine-description, JSON-lines and reference-subprocess helpers live in
:mod:`benchmarks._harness`. Results go to ``benchmarks/out/`` (ignored by git); the ones quoted in
the docs are copied to ``docs/benchmarks/``.
"""
