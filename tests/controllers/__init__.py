"""Tests of `lrresearch.controllers`, against independent numpy references."""
