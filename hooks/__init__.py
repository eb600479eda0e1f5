"""attnlab.hooks."""
