"""attnlab.probes."""
