"""Tests of `lrresearch.logs`: summaries, the row buffer, event files, TensorBoard serving them."""
