"""The researcher's own modules, loaded by a gin file's `import` line.

A gin file (or a `--gin_param`) may say `import my_package.my_module` or
`from my_package import my_module` (gin's own import statements); the module's
`@gin.configurable` functions and classes then resolve in the bindings that follow.

Where Python looks: the working directory first, then the installed packages, as
under `python -m` (the `lrresearch` console script would otherwise start with its own
bin folder there). The gin file's folder is not searched: a module name then means the
same module wherever the gin file is, so a run's `config.gin`, written into the run
directory with the import lines first, imports what the original file imported when
`lrresearch train --gin_file=runs/<run>/config.gin` is run from the same folder.

`config.parse` imports each module before gin does, so that a failure is one line
naming the gin file, the line and the module, never a traceback.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import re
import sys
import traceback
from collections.abc import Iterator

# gin's import statements: `import a.b [as c]` and `from a import b [as c]`.
_IMPORT = re.compile(r"^\s*(?:from\s+([\w.]+)\s+)?import\s+([\w.]+)(?:\s+as\s+\w+)?\s*(?:#.*)?$")

# Top-level names of the modules gin files imported in this process (`config` suggests
# names from them).
imported_roots: set[str] = set()


def module_of(line: str) -> str | None:
    """The module a gin `import` line loads (`from a import b` loads `a.b`, as in gin),
    or None for any other line and for gin's own `from __gin__ import ...`."""
    if not (m := _IMPORT.match(line)):
        return None
    module = f"{m.group(1)}.{m.group(2)}" if m.group(1) else m.group(2)
    return None if module.startswith("__gin__.") else module


@contextlib.contextmanager
def working_directory_importable() -> Iterator[None]:
    """The working directory first on `sys.path` while the gin files are parsed; the
    entry is removed afterwards (the modules stay imported)."""
    cwd = os.getcwd()
    added = sys.path[:1] != [cwd]
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def import_module(module: str, gin_folder: str | None = None) -> str | None:
    """Imports `module`; returns None, or what went wrong in a few lines (the module's
    own exception with the file and line it was raised at, or where Python looked)."""
    importlib.invalidate_caches()  # a module written since this process started
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and (module == e.name or module.startswith(f"{e.name}.")):
            return f"no module named {e.name!r}\n{_not_found_hint(module, e.name, gin_folder)}"
        return f"it imports {e.name!r}, which is not installed{_raised_at(e)}"
    except SyntaxError as e:
        return f"syntax error in the module: {e.msg} ({e.filename}:{e.lineno})"
    except (Exception, SystemExit) as e:  # whatever the module's own code raises
        text = (str(e).strip().splitlines() or [""])[0]
        return f"the module raised {type(e).__name__}{': ' + text if text else ''}{_raised_at(e)}"
    imported_roots.add(module.split(".")[0])
    return None


def _raised_at(error: BaseException) -> str:
    """` (file:line)` of the innermost frame outside Python's import machinery."""
    frames = [
        frame
        for frame in traceback.extract_tb(error.__traceback__)
        if "importlib" not in frame.filename and frame.filename != __file__
    ]
    return f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def _not_found_hint(module: str, missing: str, gin_folder: str | None) -> str:
    """Where Python looked for `module` and how to make it importable."""
    top = module.split(".")[0]
    if missing != top and (spec := importlib.util.find_spec(top)) is not None:
        found = spec.origin or ", ".join(spec.submodule_search_locations or [])
        return f"  {top} was found at {found}, without {missing}; check the name or that path."
    hint = (
        f"  Python looked in the working directory ({os.getcwd()}) and the installed "
        f"packages:\n  run lrresearch from the folder that holds {top}/ or {top}.py, "
        "or install it (pip install -e .)."
    )
    if gin_folder and any(os.path.exists(os.path.join(gin_folder, n)) for n in (top, f"{top}.py")):
        hint += f"\n  {top} is next to the gin file: run from {gin_folder}."
    return hint
