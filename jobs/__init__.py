"""Long-running work over datasets: dataset capture, the eval runs, the resumable sharded loop and its progress
log (docs/architecture.md)."""

#: Questions (or images) answered in one padded generation by default, as
#: :func:`attnlab.evals.answer.generate_answers` batches them. Batching shares each generation's fixed costs
#: (attaching a plan, the per-call work of the attention path) among its items, and a padded batch gives each item the
#: answer it gets alone. On toy-llava-deep on the CPU (``benchmarks/interventions.py``, 2026-12-05), VAR acting cost
#: 1.6x the baseline's time per answer one at a time, 1.18x sixteen at a time and about 1.1x thirty-two at a time,
#: where the baseline's own time per answer was lowest.
EVAL_BATCH_SIZE = 32
