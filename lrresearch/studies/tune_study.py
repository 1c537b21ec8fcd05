"""A `lrresearch tune` study's definition: its flags, checked, and its folder.

`StudySpec` holds one Optuna study's own inputs (name, gin configuration, search
space), `Settings` how every study of a command runs; both are written to the study
folder's `study.json` and to the storage (study attribute "flags"), so that `--resume`
and workers on any machine run the same study (`create`, `join`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import TYPE_CHECKING, Any

from lrresearch.config import parse as config

if TYPE_CHECKING:
    from lrresearch.studies.tune_methods import Arm
    from lrresearch.studies.tune_space import SearchSpace

# The parser reads these (`cli/study_parser.py`): this module imports TensorFlow,
# Optuna and the search space only inside the functions that use them.

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("none", "median", "hyperband", "successive_halving")
DIRECTIONS = ("minimize", "maximize")
HEARTBEAT_SECONDS = 10  # a dead worker's trial is found stale after 2x this


@dataclasses.dataclass(frozen=True)
class StudySpec:
    """A study's own inputs: its name (the folder's, and in the storage), the gin
    configuration every trial starts from, the search space (`--search` flags) and the
    `--method`s (each its own Optuna study, `tune_methods`)."""

    name: str
    gin_files: tuple[str, ...]
    gin_params: tuple[str, ...]
    search: tuple[str, ...]
    search_path: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()

    def space(self) -> SearchSpace:
        from lrresearch.studies.tune_space import parse_search

        return parse_search(self.search)

    def arms(self) -> list[Arm]:
        """One per `--method` (one in all without), each with its search space."""
        from lrresearch.studies.tune_methods import arms

        return arms(self.methods, self.search, self.search_path)


@dataclasses.dataclass(frozen=True)
class Settings:
    """How a study runs (the same for every study of a `tune` command).

    Attributes:
      trials: finished trials (COMPLETE + PRUNED) the study stops at, per method with
        `--method` (1 for a method with nothing to search).
      metric: the eval tag whose final value is the objective (`eval/loss`).
      seed: seeds the sampler, not training (None: Optuna's random seed).
      storage: an SQLAlchemy URL; None is `sqlite:///<study folder>/study.db`.
      heartbeat: seconds between a running trial's heartbeats.
    """

    trials: int
    sampler: str = "tpe"
    metric: str = "eval/loss"
    direction: str = "minimize"
    pruner: str = "none"
    seed: int | None = None
    storage: str | None = None
    heartbeat: int = HEARTBEAT_SECONDS

    def storage_url(self, study_dir: str) -> str:
        return self.storage or f"sqlite:///{os.path.abspath(study_dir)}/study.db"


def check(spec: StudySpec, settings: Settings) -> list[Arm]:
    """Every flag of the study checked before anything is written or trained: the
    `--method`s, the search spaces (and the grid's), the settings, the gin files and
    each `--search` binding at its ends, under each method's config. Returns the
    arms; raises `config.ConfigError` naming the flag (and the method)."""
    arms = spec.arms()
    if settings.trials < 1:
        raise config.ConfigError(f"--trials must be >= 1, got {settings.trials}")
    for flag, value, allowed in (
        ("--sampler", settings.sampler, SAMPLERS),
        ("--pruner", settings.pruner, PRUNERS),
        ("--direction", settings.direction, DIRECTIONS),
    ):
        if value not in allowed:
            raise config.ConfigError(f"{flag} must be one of {', '.join(allowed)}, got {value!r}")
    if not settings.metric.startswith("eval/") or settings.metric == "eval/":
        raise config.ConfigError(
            f"--metric must be an eval tag, eval/loss or eval/<metric> (eval/accuracy), "
            f"got {settings.metric!r}"
        )
    for arm in arms:
        with arm.named_in_errors():
            _check_arm(spec, settings, arm)
    return arms


def _check_arm(spec: StudySpec, settings: Settings, arm: Arm) -> None:
    """One method's (or the study's) grid, its config and `--search` bindings at
    their ends (under the method's files and bindings), and its evaluations."""
    from lrresearch.studies import sweep

    space = arm.space
    if settings.sampler == "grid" and arm.target(settings.trials) > space.grid_size():
        raise config.ConfigError(
            f"--trials {settings.trials} is more than the {space.grid_size()} points of "
            f"the --sampler grid; give --trials {space.grid_size()} or fewer"
        )
    samples, values = list(space.samples), space.example_values()
    layers = arm.layers({})[:-1]
    sweep.check_axes(spec.gin_files, spec.gin_params, (), samples, values, spec.search_path, layers)
    if settings.pruner != "none" and cadence(spec, arm)[1] == 0:
        raise config.ConfigError(
            f"--pruner {settings.pruner} needs evaluations during each run; bind "
            "Trainer.eval_every (batches), e.g. --gin_param='Trainer.eval_every = 100'"
        )


def cadence(spec: StudySpec, arm: Arm | None = None) -> tuple[int, int]:
    """`(Trainer.steps, Trainer.eval_every)` of the study's base configuration, under
    `arm`'s method if given."""
    import gin

    from lrresearch.training.trainer import Trainer

    layers = arm.layers({})[:-1] if arm else []
    try:
        config.parse(list(spec.gin_files), list(spec.gin_params), spec.search_path, layers)
        trainer = Trainer()
        return trainer.cadences.steps, trainer.cadences.eval_every
    finally:
        gin.clear_config()


def flags_json(spec: StudySpec, settings: Settings) -> dict[str, Any]:
    """What `study.json` holds (and the storage's study attribute "flags")."""
    return {"study": dataclasses.asdict(spec), "settings": dataclasses.asdict(settings)}


def from_flags(flags: dict[str, Any]) -> tuple[StudySpec, Settings]:
    study = {k: tuple(v) if isinstance(v, list) else v for k, v in flags["study"].items()}
    return StudySpec(**study), Settings(**flags["settings"])


def create(
    logdir: str, study_name: str | None, spec: StudySpec, settings: Settings
) -> tuple[str, StudySpec]:
    """Checks everything, then creates the study folder (never overwriting one), its
    `study.json` and the Optuna study. Returns the folder and the spec with its name."""
    import optuna

    from lrresearch.studies import tune_storage
    from lrresearch.training.open_run import open_run
    from lrresearch.training.run_dir import write_atomically

    check(spec, settings)
    if settings.storage:  # reachable, and the name free, before the folder is made
        storage = tune_storage.open_storage(settings.storage, settings.heartbeat)
        if study_name:
            tune_storage.check_new(storage, study_name, settings.storage)
    with open_run(logdir, study_name, "tune", name_flag="--study_name") as root:
        spec = dataclasses.replace(spec, name=os.path.basename(root.path))
        flags = flags_json(spec, settings)
        write_atomically(os.path.join(root.path, "study.json"), json.dumps(flags, indent=2))
        storage = tune_storage.open_storage(settings.storage_url(root.path), settings.heartbeat)
        for arm in spec.arms():
            study = optuna.create_study(
                study_name=arm.study_name(spec.name), storage=storage, direction=settings.direction
            )
            study.set_user_attr("flags", flags)
    return root.path, spec


def join(logdir: str, study_name: str, storage_url: str | None) -> tuple[str, StudySpec, Settings]:
    """An existing study (`--resume`): its flags from `study.json`, or, where this
    machine has no folder for it, from the storage `--storage` names (the folder is
    then made here, for the trials this machine trains)."""
    from lrresearch.studies import tune_storage
    from lrresearch.training.run_dir import run_path, write_atomically

    study_dir = run_path(logdir, study_name)
    path = os.path.join(study_dir, "study.json")
    if os.path.exists(path):
        with open(path) as f:
            spec, settings = from_flags(json.load(f))
        if storage_url and storage_url != settings.storage_url(study_dir):
            raise config.ConfigError(
                f"--storage {tune_storage.masked(storage_url)} is not the study's own "
                f"({tune_storage.masked(settings.storage_url(study_dir))}, in {path}); "
                "leave --storage out"
            )
        return study_dir, spec, settings
    if not storage_url:
        raise config.ConfigError(
            f"tune --resume: no study at {study_dir!r} (no study.json); pass the study's "
            "--study_name and --logdir, or its --storage to join it from another machine"
        )
    storage = tune_storage.open_storage(storage_url, HEARTBEAT_SECONDS)
    flags = tune_storage.study_flags(storage, study_name, storage_url)
    os.makedirs(study_dir, exist_ok=True)
    write_atomically(path, json.dumps(flags, indent=2))
    return study_dir, *from_flags(flags)
