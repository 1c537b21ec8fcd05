"""One batch, shared by the trainer's compiled loop and `ControlledModel`: the LR set from
the controller, the non-finite guard, mixed precision, iterate averaging, the random
streams a step draws from.
"""

from lrresearch import moved

__getattr__ = moved.forward("lrresearch.step")
