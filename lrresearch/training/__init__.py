"""The training loops: the trainer and its compiled loop, the outer loop between calls, the
run directory, resume, the `tf.distribute` strategy.
"""
