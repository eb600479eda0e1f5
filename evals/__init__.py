"""attnlab.evals."""
