"""Runnable lrresearch examples: a workload of your own (model, loss, metrics, tf.data
input) trained by `lrresearch train` from a gin file.

Each example is a module with its gin configurables and a gin file next to it that
starts with `import examples.<module>`. Run them from the repository root, where
`examples` is importable:

    lrresearch train --gin_file=examples/regression.gin
    lrresearch train --gin_file=examples/sequence.gin
"""
