"""engine/: plan windows, run the model, fix scores through the ledger, sum into a result.

windows.py (window plans), ledger.py (which positions are scored, the score-first check),
context.py (`EvalData`, `EvalContext`: what a strategy may touch), loop.py (`evaluate`,
`Result`), mixing.py (device rows -> mixed target log-probs), nodetable.py (the node's one
n-gram table, its owner's pass and shared aux rows), overlap.py (scoring on a host thread),
probes.py (the audit's capture), fanout.py (one model pass feeding several mixers), dist.py (torchrun ranks),
inputs.py (artifact + shards -> model + data), cost.py (the one 8xH100 cost model) and
report.py (tables, JSON, provenance). May import: evalkit.errors, data, model, caches.
"""
