"""Compares the schedule families (`lrresearch/controllers/decay.py`, `steps.py`) with the
references' own code, every batch from 0 to past the horizon, and writes
`docs/parity/schedule_families.md`.

The references, none of them an lrresearch dependency:
  * Keras's `keras.optimizers.schedules` (in lrresearch's venv), called with float64
    arguments so that it computes in float64 (the "Keras float32" column is the same
    schedule with Python floats, Keras's default);
  * optax in a scratch venv with jax (`--jax_python`), run with `jax_enable_x64`;
  * t5x's `create_learning_rate_scheduler`, exec'd from t5x's own `t5x/utils.py`
    (`--t5x_source`: the file, or a git clone of google-research/t5x whose HEAD is
    read) in that jax venv: importing `t5x.utils` needs flax, seqio, orbax and more;
    it returns float32 whatever the precision inside;
  * PyTorch's `StepLR`/`MultiStepLR` (`--torch_path`, put on `PYTHONPATH`), and
    transformers' `get_inverse_sqrt_schedule`, exec'd with its helper from
    transformers' own `optimization.py` (`--transformers_path`: a
    `pip install --no-deps --target DIR transformers`; `import transformers` needs
    regex, huggingface_hub and more) and driven by torch's `LambdaLR`.
Each runs in its own process (`tools/schedule_family_references.py`), never beside
TensorFlow. Ours is the float32 LR the trainer applies, from one traced function.

Passes when every batch is within one float32 rounding of a float64 reference (2**-24
relative, and 1e-6 more for float64 differences), or one float32 ulp (2**-23) of t5x's
float32; exits 1 otherwise, or when a reference is missing (saying how to get it).

Run (this machine's scratch environments):
  /tmp/numerics_optaxvenv/bin/pip install optax   # once: jax and optax
  pip install --no-deps --target /tmp/ref_families transformers
  python tools/check_schedule_families_reference.py --torch_path=/tmp/numerics_refpkgs \
      --transformers_path=/tmp/ref_families --jax_python=/tmp/numerics_optaxvenv/bin/python \
      --t5x_source=/work/.mirror/google-research+t5x/repo
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from measured_page import REPO, run_and_write

RUNNER = os.path.join(REPO, "tools", "schedule_family_references.py")
ROUNDING = 2.0**-24 * (1 + 1e-6)  # one float32 rounding of a float64 value
FLOAT32_ULP = 2.0**-23  # against a reference that itself returns float32 (t5x)

# fmt: off
CASES: dict[str, tuple[str, str, dict, int, tuple[str, dict]]] = {}


def case(name: str, library: str, function: str, kwargs: dict, steps: int, ours: str, **our):
    """Adds a setting: the reference `library.function(**kwargs)` over `steps` batches
    against our controller class `ours(**our)`."""
    CASES[name] = (library, function, kwargs, steps, (ours, our))


# Settings differ from the ones in tests/controllers/test_schedule_families.py.
ISQRT, T5X = "get_inverse_sqrt_schedule", "create_learning_rate_scheduler"
case("transformers inverse_sqrt W=4000", "transformers", ISQRT, {"num_warmup_steps": 4000},
     30_000, "InverseSqrtController", peak_lr=5e-4, warmup_steps=4000)
case("transformers inverse_sqrt W=0 (timescale 10000)", "transformers", ISQRT,
     {"num_warmup_steps": 0}, 20_000, "InverseSqrtController", peak_lr=1e-3, warmup_steps=0)
case("transformers inverse_sqrt W=300 timescale=1000", "transformers", ISQRT,
     {"num_warmup_steps": 300, "timescale": 1000}, 5_000, "InverseSqrtController",
     peak_lr=0.01, warmup_steps=300, timescale=1000)
case("t5x constant*linear_warmup*rsqrt_decay (defaults)", "t5x", T5X, {}, 10_000,
     "InverseSqrtController", peak_lr=0.5 / 1000**0.5, warmup_steps=1000, min_lr=1e-8)
case("t5x constant*rsqrt_decay W=500", "t5x", T5X,
     {"factors": "constant * rsqrt_decay", "base_learning_rate": 1.0, "warmup_steps": 500},
     5_000, "InverseSqrtController", peak_lr=1.0 / 500**0.5, warmup_steps=500,
     linear_warmup=False, min_lr=1e-8)
case("t5x constant*rsqrt_normalized_decay W=250", "t5x", T5X,
     {"factors": "constant * rsqrt_normalized_decay", "base_learning_rate": 0.003,
      "warmup_steps": 250, "min_learning_rate": 0.0}, 4_000, "InverseSqrtController",
     peak_lr=0.003, warmup_steps=250, linear_warmup=False)
POLY, EXP = "PolynomialDecayController", "ExponentialDecayController"
INV = "InverseTimeDecayController"
case("Keras PolynomialDecay linear", "keras", "PolynomialDecay",
     {"initial_learning_rate": 0.1, "decay_steps": 1000, "end_learning_rate": 1e-4}, 1_500,
     POLY, initial_lr=0.1, decay_steps=1000, end_lr=1e-4)
case("Keras PolynomialDecay power=2 cycle", "keras", "PolynomialDecay",
     {"initial_learning_rate": 0.05, "decay_steps": 300, "end_learning_rate": 0.0,
      "power": 2.0, "cycle": True}, 1_400,
     POLY, initial_lr=0.05, decay_steps=300, end_lr=0.0, power=2.0, cycle=True)
case("Keras PolynomialDecay power=0.5", "keras", "PolynomialDecay",
     {"initial_learning_rate": 1e-3, "decay_steps": 777, "end_learning_rate": 1e-5,
      "power": 0.5}, 1_000, POLY, initial_lr=1e-3, decay_steps=777, end_lr=1e-5, power=0.5)
case("optax polynomial_schedule rising, begin=100", "optax", "polynomial_schedule",
     {"init_value": 1e-4, "end_value": 1e-2, "power": 1, "transition_steps": 500,
      "transition_begin": 100}, 800,
     POLY, initial_lr=1e-4, end_lr=1e-2, power=1.0, decay_steps=500, transition_begin=100)
case("optax polynomial_schedule power=3", "optax", "polynomial_schedule",
     {"init_value": 0.3, "end_value": 0.01, "power": 3, "transition_steps": 1200}, 1_500,
     POLY, initial_lr=0.3, end_lr=0.01, power=3.0, decay_steps=1200)
case("Keras ExponentialDecay", "keras", "ExponentialDecay",
     {"initial_learning_rate": 0.1, "decay_steps": 100, "decay_rate": 0.96}, 3_000,
     EXP, initial_lr=0.1, decay_steps=100, decay_rate=0.96)
case("Keras ExponentialDecay staircase", "keras", "ExponentialDecay",
     {"initial_learning_rate": 0.1, "decay_steps": 100, "decay_rate": 0.96, "staircase": True},
     3_000, EXP, initial_lr=0.1, decay_steps=100, decay_rate=0.96, staircase=True)
case("Keras ExponentialDecay per batch", "keras", "ExponentialDecay",
     {"initial_learning_rate": 0.02, "decay_steps": 1, "decay_rate": 0.999}, 3_000,
     EXP, initial_lr=0.02, decay_steps=1, decay_rate=0.999)
case("optax exponential_decay begin, staircase, end", "optax", "exponential_decay",
     {"init_value": 0.1, "transition_steps": 250, "decay_rate": 0.5, "transition_begin": 400,
      "staircase": True, "end_value": 1e-3}, 3_000, EXP, initial_lr=0.1, decay_steps=250,
     decay_rate=0.5, transition_begin=400, staircase=True, end_lr=1e-3)
case("optax exponential_decay rising to end", "optax", "exponential_decay",
     {"init_value": 1e-4, "transition_steps": 100, "decay_rate": 2.0, "end_value": 0.05},
     2_000, EXP, initial_lr=1e-4, decay_steps=100, decay_rate=2.0, end_lr=0.05)
case("Keras InverseTimeDecay", "keras", "InverseTimeDecay",
     {"initial_learning_rate": 0.1, "decay_steps": 500, "decay_rate": 0.5}, 3_000,
     INV, initial_lr=0.1, decay_steps=500, decay_rate=0.5)
case("Keras InverseTimeDecay staircase", "keras", "InverseTimeDecay",
     {"initial_learning_rate": 0.1, "decay_steps": 500, "decay_rate": 0.5, "staircase": True},
     3_000, INV, initial_lr=0.1, decay_steps=500, decay_rate=0.5, staircase=True)
case("Keras InverseTimeDecay per batch", "keras", "InverseTimeDecay",
     {"initial_learning_rate": 0.01, "decay_steps": 1, "decay_rate": 0.01}, 2_000,
     INV, initial_lr=0.01, decay_steps=1, decay_rate=0.01)
PIECES = "PiecewiseConstantController"
case("Keras PiecewiseConstantDecay", "keras", "PiecewiseConstantDecay",
     {"boundaries": [1000, 2000, 2001], "values": [0.1, 0.05, 0.01, 0.001]}, 3_000,
     PIECES, boundaries=[1000, 2000, 2001], values=[0.1, 0.05, 0.01, 0.001])
case("Keras PiecewiseConstantDecay boundary 0", "keras", "PiecewiseConstantDecay",
     {"boundaries": [0], "values": [0.3, 0.1]}, 100, PIECES, boundaries=[0], values=[0.3, 0.1])
case("optax piecewise_constant_schedule to 0", "optax", "piecewise_constant_schedule",
     {"init_value": 0.2, "boundaries_and_scales": {"500": 0.1, "1500": 0.5, "1600": 0.0}},
     2_000, PIECES, boundaries=[500, 1500, 1600],
     values=[0.2, 0.2 * 0.1, 0.2 * 0.1 * 0.5, 0.0], at_boundary="next")
case("optax piecewise_constant_schedule boundary 0", "optax", "piecewise_constant_schedule",
     {"init_value": 1.0, "boundaries_and_scales": {"0": 0.5, "10": 0.1}}, 50,
     PIECES, boundaries=[0, 10], values=[1.0, 0.5, 0.05], at_boundary="next")
case("torch StepLR", "torch", "StepLR", {"step_size": 30, "gamma": 0.1}, 1_000,
     "StepController", base_lr=0.1, step_size=30, gamma=0.1)
case("torch StepLR step_size=1 (ExponentialLR)", "torch", "StepLR",
     {"step_size": 1, "gamma": 0.998}, 5_000,
     "StepController", base_lr=0.5, step_size=1, gamma=0.998)
case("torch StepLR gamma=1.5", "torch", "StepLR", {"step_size": 250, "gamma": 1.5}, 1_000,
     "StepController", base_lr=0.01, step_size=250, gamma=1.5)
case("torch MultiStepLR", "torch", "MultiStepLR", {"milestones": [300, 600, 900], "gamma": 0.1},
     1_200, "MultiStepController", base_lr=0.1, milestones=[300, 600, 900])
case("torch MultiStepLR 0 and a repeat", "torch", "MultiStepLR",
     {"milestones": [0, 50, 50, 400], "gamma": 0.3}, 600,
     "MultiStepController", base_lr=0.2, milestones=[0, 50, 50, 400], gamma=0.3)
# fmt: on
# The optimizer's LR a torch/transformers scheduler starts from (our base_lr / peak_lr).
TORCH_LR = {
    name: our[1].get("base_lr", our[1].get("peak_lr"))
    for name, (library, _, _, _, our) in CASES.items()
    if library in ("torch", "transformers")
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jax_python", default="/tmp/numerics_optaxvenv/bin/python")
    parser.add_argument("--torch_path", default="/tmp/numerics_refpkgs")
    parser.add_argument("--transformers_path", default="/tmp/ref_families")
    parser.add_argument("--t5x_source", default="/work/.mirror/google-research+t5x/repo")
    return parser.parse_args()


def t5x_utils(source: str, scratch: str) -> tuple[str, str]:
    """`(path of t5x/utils.py, where it came from)`: the file, or HEAD of a git clone."""
    if os.path.isfile(source):
        return source, source
    head = ["git", "-C", source, "rev-parse", "HEAD"]
    commit = subprocess.run(head, capture_output=True, text=True, check=True).stdout.strip()
    show = ["git", "-C", source, "show", "HEAD:t5x/utils.py"]
    text = subprocess.run(show, capture_output=True, text=True, check=True).stdout
    path = os.path.join(scratch, "t5x_utils.py")
    pathlib.Path(path).write_text(text)
    return path, f"google-research/t5x {commit}, t5x/utils.py"


def run_references(args: argparse.Namespace, scratch: str) -> tuple[dict, list[str]]:
    """Every reference array (one process per interpreter) and what ran them."""
    optimization = os.path.join(args.transformers_path, "transformers", "optimization.py")
    for path, fix in [
        (args.jax_python, "a venv with jax and optax (pip install optax)"),
        (os.path.join(args.torch_path, "torch"), "pip install --target DIR torch"),
        (optimization, "pip install --no-deps --target DIR transformers"),
        (args.t5x_source, "a clone of github.com/google-research/t5x, or its t5x/utils.py"),
    ]:
        if not os.path.exists(path):
            sys.exit(f"{path} does not exist: {fix}, then pass its path (see --help)")
    utils, t5x_origin = t5x_utils(args.t5x_source, scratch)
    env = {**os.environ, "T5X_UTILS": utils, "TRANSFORMERS_OPTIMIZATION": optimization}
    groups = {
        args.jax_python: ("optax", "t5x"),
        sys.executable: ("torch", "transformers"),
    }
    arrays: dict[str, np.ndarray] = {}
    for python, libraries in groups.items():
        cases = [
            {"name": name, "library": lib, "function": fn, "kwargs": kw, "steps": steps,
             "lr": TORCH_LR.get(name)}
            for name, (lib, fn, kw, steps, _) in CASES.items() if lib in libraries
        ]  # fmt: skip
        spec, out = os.path.join(scratch, "cases.json"), os.path.join(scratch, "out.npz")
        pathlib.Path(spec).write_text(json.dumps(cases))
        child_env = dict(env)
        if python == sys.executable:
            child_env["PYTHONPATH"] = args.torch_path
        subprocess.run([python, RUNNER, spec, out], env=child_env, check=True)
        with np.load(out) as loaded:
            arrays.update({k: loaded[k] for k in loaded.files})
    versions = subprocess.run(
        [args.jax_python, "-c", "import jax, optax; print(f'jax {jax.__version__}, "
         "optax {optax.__version__}')"], capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    torch_version = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['triton'] = None; import torch; "
         "print(torch.__version__)"], capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": args.torch_path},
    ).stdout.strip()  # fmt: skip
    dist = sorted(pathlib.Path(args.transformers_path).glob("transformers-*.dist-info"))
    transformers_version = dist[-1].name.removesuffix(".dist-info").split("-")[1] if dist else "?"
    origins = [
        f"{versions}; torch {torch_version}; transformers {transformers_version} "
        f"(`optimization.py` of the wheel, its two functions exec'd); {t5x_origin} "
        f"(`create_learning_rate_scheduler` exec'd)"
    ]
    return arrays, origins


def keras_reference(function: str, kwargs: dict, steps: int, float64: bool) -> np.ndarray:
    """A Keras schedule over steps 0 .. steps - 1; with `float64`, its float arguments
    as numpy float64 so that Keras computes in float64."""
    import keras

    def cast(value):
        if isinstance(value, list):
            return [cast(v) for v in value]
        return np.float64(value) if float64 and isinstance(value, float) else value

    schedule = getattr(keras.optimizers.schedules, function)(
        **{k: cast(v) for k, v in kwargs.items()}
    )
    return np.asarray(schedule(np.arange(steps, dtype=np.int64)), dtype=np.float64)


def ours(class_name: str, kwargs: dict, steps: int) -> np.ndarray:
    """Our float32 LR per batch, from one traced function of the scalar step."""
    import tensorflow as tf

    from lrresearch import controllers
    from lrresearch.controllers.signals import make_signals

    controller = getattr(controllers, class_name)(**kwargs)

    @tf.function
    def lrs(ts: tf.Tensor) -> tf.Tensor:
        return tf.map_fn(
            lambda t: controller.compute(make_signals(t, 1.0)).lr,
            ts,
            fn_output_signature=tf.float32,
        )

    return lrs(tf.range(steps, dtype=tf.int64)).numpy().astype(np.float64)


def differences(got: np.ndarray, want: np.ndarray) -> tuple[float, float, int]:
    """Max absolute and relative difference (0 where both are 0), and the batches whose
    float32 LR is not the reference rounded to float32."""
    absolute = np.abs(got - want)
    scale = np.abs(want)
    relative = np.where(absolute == 0, 0.0, absolute / np.where(scale == 0, 1e-300, scale))
    unequal = int(np.sum(got.astype(np.float32) != want.astype(np.float32)))
    return float(absolute.max()), float(relative.max()), unequal


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        arrays, origins = run_references(args, scratch)
    import keras  # after the references: a missing one is said in a second
    import tensorflow as tf

    print(f"references: keras {keras.__version__}, tensorflow {tf.__version__}; {origins[0]}")
    print()
    print("| setting | batches | max abs diff | max rel diff | float32 unequal | bound |")
    print("|---|---|---|---|---|---|")
    failed, notes = [], []
    for name, (library, function, kwargs, steps, (cls, our_kwargs)) in CASES.items():
        if library == "keras":
            want = keras_reference(function, kwargs, steps, float64=True)
            keras32 = keras_reference(function, kwargs, steps, float64=False)
            off = differences(keras32, want)[1]
            notes.append(
                f"{name}: Keras in float32 (its default) is {off:.2e} relative off its own "
                "float64 result"
            )
        else:
            want = arrays[name]
        got = ours(cls, our_kwargs, steps)
        bound = FLOAT32_ULP if library == "t5x" else ROUNDING
        absolute, relative, unequal = differences(got, want)
        print(f"| {name} | {steps:,} | {absolute:.2e} | {relative:.2e} | {unequal} | {bound:.2e} |")
        if relative > bound:
            failed.append(name)
        closed = arrays.get(name + "/closed_form")
        if closed is not None:
            drift = differences(closed, want)[1]
            notes.append(f"{name}: torch's closed form is {drift:.2e} relative off the "
                         "chainable form it returns per step")  # fmt: skip
    print()
    print("\n".join(f"- {note}" for note in notes))
    print()
    print("OK" if not failed else f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


INTRO = (
    "The schedule families against the references' own code, every batch from 0 to past "
    "the horizon (`tools/check_schedule_families_reference.py`; its docstring says how each "
    "reference is run). transformers does not import without regex, huggingface_hub and "
    "more, nor t5x.utils without flax, seqio and orbax: their schedule functions are exec'd "
    "from their own source files (transformers' wheel, t5x's repository at the commit named "
    "below), and driven by torch's LambdaLR and jax. Ours is the float32 LR the trainer "
    "applies; the references run in "
    "float64 (Keras with float64 arguments, optax with `jax_enable_x64`, PyTorch and "
    "transformers in Python floats), except t5x, which returns float32. One float32 rounding "
    'is 2^-24 = 5.96e-8 relative. "float32 unequal" counts the batches whose LR is not the '
    "reference's rounded to float32."
)

if __name__ == "__main__":
    sys.exit(
        run_and_write(main, "docs/parity/schedule_families.md", "Schedule families parity", INTRO)
    )
