"""User code: load `FILE.py:NAME` for `--plugin` (a strategy), `--model` (a model factory)
and `--score-fn` (a black-box eval loop).

A strategy plugin implements the protocol every built-in implements
(evalkit.strategies.registry.Strategy):

    class MyStrategy:                      # subclassing evalkit.strategies.registry.Strategy is easiest
        def __init__(self, opts): ...      # opts: the parsed evalkit.score flags (seq_len, stride, ...)
        label: str                         # name shown in reports
        claims_doc_isolation: bool         # True -> the audit checks rule C10
        fixed_model: bool = False          # True -> ablate may feed one model pass to several mixers
        def config(self) -> dict: ...      # what to record in JSON
        def run(self, ctx) -> None: ...    # score every target exactly once through ctx.score(...)
        def learning_order(self, data):    # optional: int64 targets in the order run() scores them; an
            ...                            # --ngram under torchrun needs it (the node's one cache learns in it)

Inside `run`, the doors of `ctx` (evalkit.engine.EvalContext) are the only legal ways to
touch the validation tokens: `ctx.inputs` / `ctx.log_probs` for model inputs (the prefix),
`ctx.score(positions, logp_rows)` to fix scores, then `ctx.after_scoring(positions)` /
`ctx.tokens_for_learning(positions)` to learn from scored tokens, and
`ctx.warmup_tokens(shape)` for warm-ups.

What a strategy legitimately needs from the model it computes itself, without forward
hooks: `ctx.model` is a plain `torch.nn.Module`, so call its parts. For evalkit's GPT,
`h = ctx.model.hidden(idx)` gives the (B, T, d) final hidden states and
`ctx.model.head(h)` the logits; take `h` at the positions you score (an activation of the
prefix, legal like the logits) and pass `torch.log_softmax(ctx.model.head(h).float(), -1)`
rows to `ctx.score`. For a `--model` module, `ctx.model.inner` is your own module: call
your own submodules the same way (e.g. `inner.features(idx)`), or have its forward return
what you need. Either way the activation comes from inputs `ctx.inputs` gave you, so the
ledger's rules (score before learn, each target once) still hold and the audit checks them.

Plugins run the same way everywhere: `python -m evalkit.score ... --plugin my.py:MyStrategy`
(one more row), `python -m evalkit.ablate ... --plugin my.py:MyStrategy` (one more run; in a
grid, `strategy = "my.py:MyStrategy"`), `python -m evalkit.audit ... --plugin my.py:MyStrategy`.
Do not `@register` a plugin: it is built directly, so the same file can be loaded again
without clashing with the registry.
"""
from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

from evalkit.errors import EvalkitError

_REQUIRED = ("run", "config")
_LOADED: dict[str, object] = {}  # resolved path -> module, so a file executes once per process


def is_spec(text: str) -> bool:
    """True for 'path/file.py:NAME' (a user object), False for a registered name."""
    path, sep, _ = text.rpartition(":")
    return bool(sep) and path.endswith(".py")


def parse_spec(spec: str, flag: str = "--plugin") -> tuple[Path, str]:
    """'path/to/file.py:ClassName' -> (path, name)."""
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name.isidentifier():
        raise EvalkitError(f"{flag} {spec}: expected FILE.py:NAME, e.g. {flag} my_file.py:MyName")
    p = Path(path)
    if not p.exists():
        raise EvalkitError(f"{flag} {spec}: {path} not found; check the path (relative to the current directory)")
    if p.suffix != ".py" or not p.is_file():
        raise EvalkitError(f"{flag} {spec}: {path} is not a Python file; pass the path of a .py file")
    return p, name


def _import(path: Path, spec: str, flag: str):
    key = str(path.resolve())
    if key in _LOADED:
        return _LOADED[key]
    mod_name = "evalkit_plugin_" + hashlib.sha1(key.encode()).hexdigest()[:12]
    mspec = importlib.util.spec_from_file_location(mod_name, path)
    if mspec is None or mspec.loader is None:
        raise EvalkitError(f"{flag} {spec}: cannot import {path}")
    module = importlib.util.module_from_spec(mspec)
    sys.modules[mod_name] = module  # dataclasses and pickling look modules up by name
    try:
        mspec.loader.exec_module(module)
    except Exception as e:  # a user's file may raise anything at import; report it in one line
        sys.modules.pop(mod_name, None)
        where = f" (line {e.lineno})" if isinstance(e, SyntaxError) else ""
        raise EvalkitError(f"{flag} {spec}: importing {path} failed{where}: {type(e).__name__}: {e}") from None
    _LOADED[key] = module
    return module


def load_object(spec: str, flag: str):
    """The callable named by `spec` ('FILE.py:NAME') for `flag`; one line naming what the
    file does define when NAME is missing."""
    path, name = parse_spec(spec, flag)
    module = _import(path, spec, flag)
    obj = getattr(module, name, None)
    if obj is None:
        found = sorted(k for k, v in vars(module).items()
                       if callable(v) and not k.startswith("_") and getattr(v, "__module__", "") == module.__name__)
        raise EvalkitError(f"{flag} {spec}: {path} defines no {name!r}; defined there: {', '.join(found) or 'none'}")
    if not callable(obj):
        raise EvalkitError(f"{flag} {spec}: {name} is a {type(obj).__name__}, expected a callable")
    return obj


def load_plugin(spec: str) -> type:
    """The strategy class named by `spec`; checks it has the protocol's methods."""
    path, name = parse_spec(spec)
    module = _import(path, spec, "--plugin")
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


def plugin_file(spec: str, flag: str = "--plugin") -> Path:
    """The source file of a spec (its bytes count as code under rule C8)."""
    return parse_spec(spec, flag)[0]


def file_sha256(spec: str, flag: str = "--plugin") -> str:
    """SHA-256 of a spec's source file: a cached result must name the code that made it."""
    return hashlib.sha256(parse_spec(spec, flag)[0].read_bytes()).hexdigest()
