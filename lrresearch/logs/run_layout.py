"""The names of a run directory's files, one definition for the code that writes them
(`lrresearch.training`) and the code that reads them (`lrresearch.analysis`)."""

from __future__ import annotations

# The run's operative config, import lines included (the run layout in README.md).
CONFIG_FILE = "config.gin"
