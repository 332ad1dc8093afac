"""User strategies: load `FILE.py:NAME` for `python -m evalkit.audit --plugin`.

The protocol is the one every built-in implements (evalkit.strategies.registry.Strategy):

    class MyStrategy:                      # subclassing evalkit.strategies.registry.Strategy is easiest
        def __init__(self, opts): ...      # opts: the parsed evalkit.score flags (seq_len, stride, ...)
        label: str                         # name shown in reports
        claims_doc_isolation: bool         # True -> the audit checks rule C10
        def config(self) -> dict: ...      # what to record in JSON
        def run(self, ctx) -> None: ...    # score every target exactly once through ctx.score(...)

Inside `run`, the doors of `ctx` (evalkit.engine.EvalContext) are the only legal ways to
touch the validation tokens: `ctx.inputs` / `ctx.log_probs` for model inputs (the prefix),
`ctx.score(positions, logp_rows)` to fix scores, then `ctx.after_scoring(positions)` /
`ctx.tokens_for_learning(positions)` to learn from scored tokens, and
`ctx.warmup_tokens(shape)` for warm-ups. Do not `@register` a plugin: the audit builds it
directly, so the same file can be loaded again without clashing with the registry.
"""
from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

from evalkit.errors import EvalkitError

_REQUIRED = ("run", "config")
_LOADED: dict[str, object] = {}  # resolved path -> module, so a file executes once per process


def parse_spec(spec: str) -> tuple[Path, str]:
    """'path/to/file.py:ClassName' -> (path, name)."""
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name.isidentifier():
        raise EvalkitError(f"--plugin {spec}: expected FILE.py:NAME, e.g. --plugin my_strategy.py:MyStrategy")
    p = Path(path)
    if not p.exists():
        raise EvalkitError(f"--plugin {spec}: {path} not found; check the path (relative to the current directory)")
    if p.suffix != ".py" or not p.is_file():
        raise EvalkitError(f"--plugin {spec}: {path} is not a Python file; pass the path of a .py file")
    return p, name


def _import(path: Path, spec: str):
    key = str(path.resolve())
    if key in _LOADED:
        return _LOADED[key]
    mod_name = "evalkit_plugin_" + hashlib.sha1(key.encode()).hexdigest()[:12]
    mspec = importlib.util.spec_from_file_location(mod_name, path)
    if mspec is None or mspec.loader is None:
        raise EvalkitError(f"--plugin {spec}: cannot import {path}")
    module = importlib.util.module_from_spec(mspec)
    sys.modules[mod_name] = module  # dataclasses and pickling look modules up by name
    try:
        mspec.loader.exec_module(module)
    except Exception as e:  # a user's file may raise anything at import; report it in one line
        sys.modules.pop(mod_name, None)
        where = f" (line {e.lineno})" if isinstance(e, SyntaxError) else ""
        raise EvalkitError(f"--plugin {spec}: importing {path} failed{where}: {type(e).__name__}: {e}") from None
    _LOADED[key] = module
    return module


def load_plugin(spec: str) -> type:
    """The strategy class named by `spec`; checks it has the protocol's methods."""
    path, name = parse_spec(spec)
    module = _import(path, spec)
    cls = getattr(module, name, None)
    if cls is None:
        found = sorted(k for k, v in vars(module).items() if isinstance(v, type) and hasattr(v, "run"))
        raise EvalkitError(f"--plugin {spec}: {path} defines no {name!r}; "
                           f"strategies there: {', '.join(found) or 'none'}")
    if not isinstance(cls, type):
        raise EvalkitError(f"--plugin {spec}: {name} is a {type(cls).__name__}, expected a strategy class")
    missing = [m for m in _REQUIRED if not callable(getattr(cls, m, None))]
    if missing:
        raise EvalkitError(f"--plugin {spec}: {name} lacks {', '.join(missing)}(); implement the protocol in "
                           "evalkit/strategies/plugins.py (subclass evalkit.strategies.registry.Strategy)")
    return cls


def plugin_file(spec: str) -> Path:
    """The source file of a plugin spec (its bytes count as code under rule C8)."""
    return parse_spec(spec)[0]
