"""Configuration: gin parsing with errors that name the file and line, the researcher's own
modules, references on the command line, the config `--resume` uses.
"""

from lrresearch import moved

__getattr__ = moved.forward("lrresearch.config")
