"""One module per ``MLproject`` entry point (``python -m training.commands.<name>``): each
parses its config and calls the pipeline. Commands never import one another."""
