"""Tests of `lrresearch.config`: gin parsing, errors that name the place, users' modules."""
