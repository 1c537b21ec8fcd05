"""The reference schedules of `tools/check_schedule_families_reference.py`, run by their
own code in their own interpreter (never lrresearch's dependencies, never TensorFlow).

`python tools/schedule_family_references.py CASES.json OUT.npz` reads a list of cases
`{"name", "library", "function", "kwargs", "steps"}` and writes, per case name, the
reference's LR for steps 0 .. steps - 1 (and `<name>/closed_form` for PyTorch's
chainable schedulers). Libraries:
  * "optax": `optax.<function>(**kwargs)` evaluated with `jax_enable_x64` (float64);
  * "t5x": `create_learning_rate_scheduler(**kwargs)` exec'd from t5x's own
    `t5x/utils.py` (the file named by `T5X_UTILS`; importing `t5x.utils` needs flax,
    seqio, orbax and more), with x64 on (t5x still returns float32);
  * "torch": `torch.optim.lr_scheduler.<function>(SGD, **kwargs)`, the LR in
    `param_groups` after `t` calls of `scheduler.step()`;
  * "transformers": `get_inverse_sqrt_schedule(SGD, **kwargs)` exec'd with its helper
    from transformers' own `optimization.py` (the file named by
    `TRANSFORMERS_OPTIMIZATION`; `import transformers` needs regex, huggingface_hub,
    tokenizers and more), driven as "torch".
"""

from __future__ import annotations

import ast
import json
import os
import sys

import numpy as np


def functions_from_source(path: str, names: list[str], namespace: dict) -> dict:
    """Executes only the top-level functions `names` of the Python file at `path` in
    `namespace` (their imports supplied by the caller) and returns that namespace."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    nodes = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
    missing = set(names) - {n.name for n in nodes}
    if missing:
        sys.exit(f"{path} defines no {sorted(missing)}")
    for node in nodes:
        node.returns = None  # annotations name the module's other classes
    module = ast.Module(body=nodes, type_ignores=[])
    exec(compile(module, path, "exec"), namespace)  # the reference's own code
    return namespace


def jax_case(case: dict) -> np.ndarray:
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    steps = jnp.arange(case["steps"], dtype=jnp.int64)
    if case["library"] == "optax":
        import optax

        kwargs = dict(case["kwargs"])
        if "boundaries_and_scales" in kwargs:  # JSON keys are strings
            kwargs["boundaries_and_scales"] = {
                int(k): v for k, v in kwargs["boundaries_and_scales"].items()
            }
        schedule = getattr(optax, case["function"])(**kwargs)
    else:
        namespace = {"jnp": jnp, "LearningRateCallable": object}
        path = os.environ["T5X_UTILS"]
        functions_from_source(path, ["create_learning_rate_scheduler"], namespace)
        schedule = namespace["create_learning_rate_scheduler"](**case["kwargs"])
    return np.asarray(jax.vmap(schedule)(steps), dtype=np.float64)


def torch_scheduler(case: dict):
    """A function `optimizer -> scheduler` for a "torch" or "transformers" case."""
    import torch

    kwargs = case["kwargs"]
    if case["library"] == "torch":
        cls = getattr(torch.optim.lr_scheduler, case["function"])
        return lambda optimizer: cls(optimizer, **kwargs)
    from functools import partial

    namespace = {
        "math": __import__("math"),
        "partial": partial,
        "LambdaLR": torch.optim.lr_scheduler.LambdaLR,
        "Optimizer": torch.optim.Optimizer,
    }
    names = ["_get_inverse_sqrt_schedule_lr_lambda", "get_inverse_sqrt_schedule"]
    functions_from_source(os.environ["TRANSFORMERS_OPTIMIZATION"], names, namespace)
    return lambda optimizer: namespace["get_inverse_sqrt_schedule"](optimizer, **kwargs)


def torch_case(case: dict) -> dict[str, np.ndarray]:
    import torch

    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=case["lr"])
    scheduler = torch_scheduler(case)(optimizer)
    lrs, closed = [], []
    for _ in range(case["steps"]):
        lrs.append(optimizer.param_groups[0]["lr"])
        if hasattr(scheduler, "_get_closed_form_lr"):
            closed.append(scheduler._get_closed_form_lr()[0])
        optimizer.step()
        scheduler.step()
    out = {case["name"]: np.array(lrs, np.float64)}
    if closed:
        out[case["name"] + "/closed_form"] = np.array(closed, np.float64)
    return out


def main() -> None:
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    out: dict[str, np.ndarray] = {}
    for case in cases:
        if case["library"] in ("optax", "t5x"):
            out[case["name"]] = jax_case(case)
        else:
            sys.modules.setdefault("triton", None)  # unused here; its import can segfault
            out.update(torch_case(case))
    np.savez(sys.argv[2], **out)


if __name__ == "__main__":
    main()
