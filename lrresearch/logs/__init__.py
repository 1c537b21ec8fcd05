"""What is logged and how: exact-tag summaries, the per-batch rows, their event encoding,
the run's event files, TensorBoard started to serve every batch.
"""
