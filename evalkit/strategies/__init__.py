"""strategies/: one file per evaluation strategy, registered by name (registry.py).

flat and sliding windows (sliding.py), per-document LoRA test-time training (ttt.py) and
its global phases (ttt_phases.py), and loading user strategies from a file (plugins.py).
A strategy drives the engine through `EvalContext` (evalkit/engine/context.py) and never
touches the ledger directly. May import: evalkit.errors, data, model, engine, caches.
Importing this package registers the built-ins.
"""
from evalkit.strategies import sliding, ttt  # noqa: F401  (register on import)
