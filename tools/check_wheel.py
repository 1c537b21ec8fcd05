"""The wheel as users install it: build it, install it (not editable) into a fresh
virtualenv, and from an empty folder run what the docs promise; exit 1 on any failure.

Run by `.ci/run` after the tests (not by pytest: it takes about a minute):

    python tools/check_wheel.py [--keep DIR]

1. `pip wheel --no-deps` builds the wheel from a copy of the checkout (a stale `build/`
   folder must not put files in it that the sources no longer have).
2. A fresh venv gets the wheel with `--no-deps`; its dependencies come from the running
   interpreter's site-packages through a `.pth` line (installing TensorFlow again costs
   minutes), and `pip check` proves they satisfy the wheel's requirements. A path added
   by a `.pth` line is not a site dir: the `.pth` files in it, the editable install's
   finder among them, are not run, so the checkout cannot leak in; step 3 checks that
   `lrresearch` is imported from the fresh venv.
3. From an empty folder, with no PYTHONPATH: `lrresearch train` (the built-in default),
   every shipped gin file by its name (`--gin_file=strategies/x.gin`, in one process:
   TensorFlow starts once), the old `gin/...` spelling and a user's file that includes
   shipped ones, `lrresearch list configs` (every shipped name listed) and
   `lrresearch board --help`. The wheel's shipped names must be exactly the
   checkout's (`lrresearch/config/files.py`: `SHIPPED`, `shipped_names`).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import venv

REPO = pathlib.Path(__file__).resolve().parent.parent
STEPS = 3  # batches per shipped file: enough to trace, train, log and evaluate
# What every shipped file trains with here: a few batches, nothing slow on the side.
QUICK = (
    f"Trainer.steps = {STEPS}",
    "Trainer.eval_every = 0",
    "Trainer.histogram_every = 0",
    "Trainer.checkpoint_every = 0",
)


def expected_names() -> list[str]:
    """The checkout's gin files, as `--gin_file` names them (`files.shipped_names` of
    the checkout's own package, whatever else is installed)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from lrresearch.config import files

    if not files.SHIPPED.is_relative_to(REPO):
        raise SystemExit(f"check_wheel: lrresearch is imported from {files.SHIPPED}, not {REPO}")
    return files.shipped_names()


def build_wheel(work: pathlib.Path) -> pathlib.Path:
    source = work / "source"
    ignore = shutil.ignore_patterns(
        ".git", ".venv", "venv", "runs", "build", "dist", "*.egg-info", "__pycache__"
    )
    shutil.copytree(REPO, source, ignore=ignore)
    dist = work / "dist"
    # With setuptools at hand (CPython < 3.12 venvs have it) pip need not fetch it.
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", *isolation,
         "--quiet", "-w", str(dist)])  # fmt: skip
    (wheel,) = dist.glob("lrresearch-*.whl")
    return wheel


def fresh_venv(work: pathlib.Path, wheel: pathlib.Path) -> pathlib.Path:
    """A venv holding only the wheel; the dependencies are the running interpreter's."""
    env_dir = work / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = run_output(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
    )
    deps = sysconfig.get_paths()["purelib"]
    pathlib.Path(site.strip(), "deps_of_the_ci_venv.pth").write_text(deps + "\n")
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    run([*pip, "install", "--no-deps", "--quiet", "--no-warn-conflicts", str(wheel)])
    run([*pip, "check"])  # the wheel's declared dependencies are all there
    return env_dir


def run(argv: list[str], **kwargs) -> None:
    print("+", " ".join(argv), flush=True)
    subprocess.run(argv, check=True, **kwargs)


def run_output(argv: list[str], **kwargs) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kwargs).stdout


def check_installed(env_dir: pathlib.Path, empty: pathlib.Path) -> None:
    """Runs the user's commands from `empty` with the venv's `lrresearch`."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", PATH=f"{env_dir / 'bin'}{os.pathsep}{env['PATH']}")
    command = str(env_dir / "bin" / "lrresearch")
    quick = [f"--gin_param={p}" for p in QUICK]
    run([command, "train", "--logdir=runs", "--quiet", *quick], cwd=empty, env=env)
    names = expected_names()
    run([str(env_dir / "bin" / "python"), str(pathlib.Path(__file__).resolve()), "--inside",
         str(env_dir), *names], cwd=empty, env=env)  # fmt: skip
    listed = run_output([command, "list", "configs"], cwd=empty, env=env)
    missing = [n for n in names if f"  {n}\n" not in listed]
    if missing:
        raise SystemExit(f"check_wheel: `lrresearch list configs` does not list {missing}")
    run([command, "board", "--help"], cwd=empty, env=env, stdout=subprocess.DEVNULL)


def inside(env_dir: str, names: list[str]) -> int:
    """In the fresh venv: the package is the wheel's, ships exactly `names`, and trains
    each by its name; the old spelling and a user's include work too."""
    import lrresearch
    from lrresearch.cli import main
    from lrresearch.config import files

    where = pathlib.Path(lrresearch.__file__).resolve()
    if not where.is_relative_to(pathlib.Path(env_dir).resolve()):
        raise SystemExit(f"check_wheel: lrresearch imported from {where}, not the fresh venv")
    shipped = files.shipped_names()
    if shipped != names:
        raise SystemExit(
            f"check_wheel: the wheel ships {len(shipped)} gin files, the checkout has "
            f"{len(names)}; missing: {sorted(set(names) - set(shipped))}, extra: "
            f"{sorted(set(shipped) - set(names))}"
        )
    pathlib.Path("mine.gin").write_text(
        "include 'base.gin'\ninclude 'strategies/warmup_cosine.gin'\n"
        "WarmupCosineController.warmup_steps = 1\n"
    )
    failed = []
    quick = [f"--gin_param={p}" for p in QUICK]
    for name in [*names, "gin/strategies/loss_trend.gin", "mine.gin"]:
        start = time.perf_counter()
        run_name = name.replace("/", "-").removesuffix(".gin")
        code = main(["train", f"--gin_file={name}", "--logdir=runs", f"--run_name={run_name}",
                     "--quiet", *quick])  # fmt: skip
        print(f"{'ok' if code == 0 else f'FAILED ({code})'} {name} "
              f"{time.perf_counter() - start:.1f} s", flush=True)  # fmt: skip
        if code != 0:
            failed.append(name)
    if failed:
        raise SystemExit(f"check_wheel: {len(failed)} shipped configs failed: {failed}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--keep", default=None, help="build in DIR and keep it (default: a temp dir)"
    )
    parser.add_argument("--inside", default=None, help=argparse.SUPPRESS)
    parser.add_argument("names", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        return inside(args.inside, args.names)
    try:
        return check(args.keep)
    except subprocess.CalledProcessError as e:
        print(f"check_wheel: FAILED: `{' '.join(map(str, e.cmd))[:300]}` exited {e.returncode}")
        return 1


def check(keep: str | None) -> int:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="check_wheel-") as temporary:
        work = pathlib.Path(keep or temporary)
        work.mkdir(parents=True, exist_ok=True)
        wheel = build_wheel(work)
        env_dir = fresh_venv(work, wheel)
        empty = work / "empty"
        empty.mkdir()
        built = time.perf_counter() - start
        check_installed(env_dir, empty)
    total = time.perf_counter() - start
    print(f"check_wheel: ok, {len(expected_names())} shipped gin files trained from the "
          f"installed wheel; {total:.0f} s ({built:.0f} s to build and install)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
