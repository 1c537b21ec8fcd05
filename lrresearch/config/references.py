"""A gin reference given on the command line (`--controllers='@MaxChange()'`), built
with the bindings of `--gin_file`/`--gin_param`, with errors that name the flag value
and the fix.

A command-line reference is written as in a gin file: `@Name()`, or `@scope/Name()`
for the bindings under `scope/` (`smooth/MaxChange.max_change_ratio = 0.01`). `@config`
stands for the value the gin config binds to `Trainer.controller`, as written there.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import gin

from lrresearch.config import arguments as unknown_arguments
from lrresearch.config import parse as config

CONFIG = "@config"
_BINDING = "Trainer.controller"
_FIX = f"pass a gin file that binds it, or --gin_param='{_BINDING} = @GradNormController()'"


def is_reference(text: str) -> bool:
    """Whether a flag value is a gin reference (`@...`) rather than a plain name."""
    return text.startswith("@")


def _fail(flag: str, text: str, why: str) -> config.ConfigError:
    return config.ConfigError(f"{flag}={text}: {why}")


def expand_config(text: str, flag: str) -> str:
    """`@config` -> the reference the gin config binds to `Trainer.controller`
    (e.g. `@smooth/MaxChange()`); any other value unchanged."""
    if text != CONFIG:
        return text
    try:
        value = gin.query_parameter(_BINDING)
    except ValueError:
        raise _fail(flag, text, f"the gin config binds no {_BINDING}; {_FIX}") from None
    if not isinstance(value, gin.config.ConfigurableReference) or not value.evaluate:
        why = f"the gin config binds {_BINDING} to {value!r}, not to a reference @Name()"
        raise _fail(flag, text, f"{why}; {_FIX}")
    return repr(value)


def _may_return(target: Any, base: type) -> bool:
    """False when `target` is a class other than `base`, or a function annotated to
    return something else: such a reference is refused before it is called."""
    if inspect.isclass(target):
        return issubclass(target, base)
    annotation = inspect.signature(target).return_annotation
    if annotation is inspect.Signature.empty:
        return True
    return base.__name__ in str(annotation)


def _call_error(error: Exception, target: Any) -> str:
    """What a missing binding or argument says, with a binding that would fix it."""
    message = config.explain_missing_binding(error)
    if message is None:
        return str(error).strip().splitlines()[0]
    # A composite's required parameters are controllers: show one as the example value.
    if m := re.search(r"--gin_param='\w+\.(\w+) = \.\.\.'", message):
        parameter = inspect.signature(target).parameters.get(m.group(1))
        annotation = str(parameter.annotation) if parameter else ""
        if "Controller" in annotation:
            example = "@GradNormController()"
            if "Sequence" in annotation:
                example = f"[{example}, @PolyakController()]"
            message = message.replace("= ...'", f"= {example}'")
    return message


def build(text: str, base: type, flag: str) -> Any:
    """Builds the object the reference `text` (`@Name()`, `@scope/Name()`) stands
    for, which must be a `base`; raises `ConfigError` naming `flag=text` and the fix.

    Unknown names, a missing `()`, a missing required binding and an object of another
    type are reported before anything is built that is not a `base`.
    """
    kind = base.__name__
    if not (text.startswith("@") and text.endswith("()")):
        raise _fail(
            flag, text, f"write a gin reference as @Name() or @scope/Name(), e.g. @{kind}()"
        )
    try:
        reference = gin.config.parse_value(text)
    except (ValueError, SyntaxError) as e:
        name = text[1:-2].rpartition("/")[2]
        hint = unknown_arguments.suggest(name, config.configurable_names())
        first = str(e).strip().splitlines()[0]
        raise _fail(flag, text, f"{first}{hint}") from None
    if not _may_return(reference.configurable.wrapped, base):
        raise _fail(
            flag, text, f"{reference.selector} is not a {kind}; see: lrresearch list controllers"
        )
    try:
        built = reference.scoped_configurable_fn()
    except (RuntimeError, TypeError) as e:
        raise _fail(flag, text, _call_error(e, reference.configurable.wrapped)) from None
    if not isinstance(built, base):
        raise _fail(flag, text, f"it returned a {type(built).__name__}, not a {kind}")
    return built
