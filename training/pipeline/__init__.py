"""The work of every command: one training run (``run.py``, the ``train`` command), a sweep, a
search, registration, export, timing, distillation, evaluation and recommendation, and the
steps they share (initial weights, baselines, the comparison table). Each command in
``training.commands`` only parses its parameters and calls one function here."""
