"""The steps the commands compose: one training run, its initial weights, the baselines and
comparison table of a sweep, and the export of a registered version."""
