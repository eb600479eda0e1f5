"""attnlab.zoo."""
