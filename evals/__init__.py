"""Gold sets and evaluation metrics."""
