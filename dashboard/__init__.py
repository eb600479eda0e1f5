"""attnlab.dashboard."""
