"""What a user sees of a run: held-out evaluation, reference forecasts, the context-length probe,
plots and TensorBoard."""
