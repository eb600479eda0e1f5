"""Things that build artefacts: the zoo trainers and their cards, and the dashboard demo (docs/architecture.md)."""
