"""Things that build artefacts: the zoo trainers and their cards (docs/architecture.md)."""
