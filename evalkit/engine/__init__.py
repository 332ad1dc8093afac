"""engine/: plan windows, run the model, fix scores through the ledger, sum into a result.

windows.py (window plans), ledger.py (which positions are scored, the score-first check),
context.py (`EvalData`, `EvalContext`: what a strategy may touch), loop.py (`evaluate`,
`Result`), fanout.py (one model pass feeding several mixers), dist.py (torchrun ranks),
inputs.py (artifact + shards -> model + data), cost.py (the one 8xH100 cost model) and
report.py (tables, JSON, provenance). May import: evalkit.errors, data, model, caches.
"""
