"""Studies that run many trainers: sweeps, their sampling and resume, the overhead profile,
the LR range test.
"""
