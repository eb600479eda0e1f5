"""Long-running work over datasets: dataset capture, the eval runs, the resumable sharded loop and its progress
log (docs/architecture.md)."""
