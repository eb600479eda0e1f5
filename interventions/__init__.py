"""attnlab.interventions."""
