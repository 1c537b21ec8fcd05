"""The MNIST-1D models at the paper's settings, and the test accuracies the authors
reported for them (greydanus/mnist1d), for `tools/workload_results.py`."""

from __future__ import annotations

# Test accuracy, %, by model: the README's table, and the 2024 notebook's saved output
# (`notebooks/mnist1d-classification.ipynb`, commit d537845, 2024-05-16).
PAPER = {"CNN": "94", "MLP": "68"}
NOTEBOOK = {"CNN": "92.3", "MLP": "65.1"}
AUTHORS = (
    "The authors' figures: **the README** of greydanus/mnist1d (its table since the "
    "first commit, 2020; the training settings are not stated there), and **the 2024 "
    "notebook** `notebooks/mnist1d-classification.ipynb` (its saved output): "
    "`train.py`'s `get_model_args()` with 6,000 steps, PyTorch Adam at 1e-2 without "
    "weight decay, batches of 100 in order, seed 42, one run, the repository's "
    "`mnist1d_data.pkl`, the paper's CNN (ConvBase) and MLP (MLPBase, hidden 100), "
    "PyTorch's init. Our rows with the paper's models and PyTorch's init are the "
    "like-for-like ones.\n"
)


def anchor_specs() -> dict[str, tuple[str, ...]]:
    """MNIST-1D models at the paper's settings (the file's Adam at a constant 1e-2)."""
    mlp = "Trainer.model = @mnist1d_mlp"
    no_bn, torch = "mnist1d_cnn.batch_norm = False", "mnist1d_cnn.init = 'torch'"
    return {
        "paper's CNN (ConvBase, no BatchNorm), Keras's init": (no_bn,),
        "paper's CNN, PyTorch's init (as the paper)": (no_bn, torch),
        "CNN with BatchNorm (our default), Keras's init": ("mnist1d_cnn.batch_norm = True",),
        "paper's MLP (MLPBase, hidden 100), Keras's init": (mlp, "mnist1d_mlp.hidden = 100"),
        "paper's MLP, PyTorch's init (as the paper)": (
            mlp,
            "mnist1d_mlp.hidden = 100",
            "mnist1d_mlp.init = 'torch'",
        ),
        "MLP, hidden 256 (get_model_args), Keras's init": (mlp, "mnist1d_mlp.hidden = 256"),
    }
