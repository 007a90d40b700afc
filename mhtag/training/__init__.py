"""Training: the fit loop, optimiser and schedule, evaluation and metrics."""
