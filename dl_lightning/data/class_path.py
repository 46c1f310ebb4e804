"""A user's class named in the config: ``pkg.module:ClassName`` or ``path/to/file.py:ClassName``.

Imported only when the user's config or command line names it (never from a checkpoint), and its constructor
arguments are checked against its signature before anything runs, so a typo is one line, not a traceback mid-fit.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
from collections.abc import Collection, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from dl_lightning.errors import InputError, one_line

_SPEC = re.compile(r"^(?P<where>[^:]+):(?P<name>[A-Za-z_][A-Za-z0-9_]*)$")
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def is_class_spec(text: str) -> bool:
    """Whether ``text`` reads as ``pkg.module:Class`` or ``file.py:Class`` (``builtin:NAME`` does not)."""
    match = _SPEC.match(text)
    if match is None or text.startswith("builtin:"):
        return False
    where = match["where"]
    return where.endswith(".py") or bool(_MODULE.match(where))


def anchored(spec: str) -> str:
    """``spec`` with a relative ``file.py`` made absolute (for processes that run in another folder: sweep trials);
    anything else unchanged."""
    if not is_class_spec(spec) or not spec.rpartition(":")[0].endswith(".py"):
        return spec
    where, _, name = spec.rpartition(":")
    return f"{Path(where).expanduser().absolute()}:{name}"


def import_class_path(spec: str, key: str = "the class path") -> type:
    """The class ``spec`` names, imported now.

    Args:
        spec: ``pkg.module:ClassName`` (importable; the working directory is searched last) or
            ``path/to/file.py:ClassName`` (the file is imported as a module of its own, once per process).
        key: the config key that named it, for the error message (e.g. ``data.source``).

    Raises:
        InputError: one line when the spec is malformed, the module or file cannot be imported, or it holds no
            class of that name (naming the closest one).
    """
    if not is_class_spec(spec):
        raise InputError(f"{key}={spec!r} is not a class path; write pkg.module:ClassName or path/to/file.py:ClassName")
    where, _, name = spec.rpartition(":")
    module = _import_file(where, key) if where.endswith(".py") else _import_module(where, key)
    found = getattr(module, name, None)
    if not isinstance(found, type):
        classes = [n for n, v in vars(module).items() if isinstance(v, type) and not n.startswith("_")]
        close = difflib.get_close_matches(name, classes, n=1, cutoff=0.5)
        hint = f"; did you mean {where}:{close[0]}?" if close else f"; its classes: {', '.join(classes) or 'none'}"
        raise InputError(f"{key}: {where} has no class {name!r}{hint}")
    return found


def _import_module(name: str, key: str) -> ModuleType:
    here = os.getcwd()
    if here not in sys.path:
        sys.path.append(here)  # last: a package in the user's folder, never shadowing an installed one
        # and for the processes started from this one (DDP ranks, sweep trials, which run in their own folders)
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), here) if p)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            raise InputError(
                f"{key}: no module named {exc.name!r}; install it, add its folder to PYTHONPATH, "
                "or name the file: path/to/file.py:ClassName"
            ) from None
        raise InputError(f"{key}: importing {name} failed: {type(exc).__name__}: {one_line(exc)}") from None
    except Exception as exc:  # the user's module raised while importing: show its error, not ours
        raise InputError(f"{key}: importing {name} failed: {type(exc).__name__}: {one_line(exc)}") from None


def _import_file(path_text: str, key: str) -> ModuleType:
    """The file as a module named after its absolute path, so importing it again returns the same classes."""
    path = Path(path_text).expanduser().absolute()
    if not path.is_file():
        raise InputError(f"{key}: file {path_text!r} not found; pass path/to/file.py:ClassName of an existing file")
    name = f"dlforge_user_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
    if name in sys.modules:
        return sys.modules[name]
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))  # as `python file.py` would: its sibling modules import
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it: dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise InputError(f"{key}: importing {path_text} failed: {type(exc).__name__}: {one_line(exc)}") from None
    return module


def argument_keys(cls: type, key: str) -> list[str]:
    """``<key>.<name>`` for each named constructor argument of ``cls`` (the keys a sweep may vary)."""
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return []
    return [f"{key}.{n}" for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def check_arguments(cls: type, args: Mapping[str, Any], key: str, provided: Collection[str] = ()) -> None:
    """Refuse ``args`` that ``cls(**args)`` would not take, before anything is built.

    Args:
        key: the config section holding the arguments (``data.args``), for the message.
        provided: parameters dlforge fills in itself; they never count as missing.

    Raises:
        InputError: an argument the constructor does not have (naming the closest one), or a required one
            left out (naming it). A constructor taking ``**kwargs`` accepts any name.
    """
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):  # no signature to read (a C extension): the constructor will say
        return
    named = {n: p for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY)}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for arg in args:
        if arg not in named and not takes_any:
            close = difflib.get_close_matches(arg, list(named), n=1, cutoff=0.5)
            hint = f"did you mean {key}.{close[0]}?" if close else f"its arguments: {', '.join(named) or 'none'}"
            raise InputError(f"{key}.{arg} is not an argument of {cls.__name__}; {hint}")
    for name, param in named.items():
        if param.default is param.empty and name not in args and name not in provided:
            raise InputError(f"{cls.__name__} needs the argument {name!r}; set {key}.{name}=...")
