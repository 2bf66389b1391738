"""``module:attribute`` targets named on the command line (``relaybus worker``,
``relaybus asyncapi --app``, ``replay --shadow``): imported from the current
directory like uvicorn's apps, a zero-argument factory called."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Any


class TargetNotFound(LookupError):
    """The target names nothing usable; the message says what to give instead."""


def load_target(target: str, kinds: tuple[type[Any], ...], what: str) -> Any:
    """The object ``module:attribute`` names, or what it returns when it is a function
    taking no arguments, if it is one of ``kinds``; else ``TargetNotFound`` naming
    ``what`` was expected. An error raised by the factory itself propagates (it is a
    bug in the application, with its own traceback)."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise TargetNotFound(f"{target!r}: give 'module:attribute'")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise TargetNotFound(f"cannot import {module_name!r}: {err}") from None
    obj = getattr(module, attr, None)
    if callable(obj) and not isinstance(obj, kinds):
        try:
            inspect.signature(obj).bind()
        except TypeError:
            raise TargetNotFound(
                f"{target!r} is not {what} (or a function of no arguments returning one)"
            ) from None
        except ValueError:  # no signature to read (a builtin): try the call
            pass
        obj = obj()
    if not isinstance(obj, kinds):
        raise TargetNotFound(f"{target!r} is not {what} (or a function returning one)")
    return obj
