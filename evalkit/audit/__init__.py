"""audit/: `python -m evalkit.audit`, legality by behaviour (rules C1-C10, docs legality.md).

checks.py (the checks), runner.py (one audit of one strategy), command.py (the command
line), selftest.py (`--self-test`: built-ins must pass, the gallery must fail) and
gallery/ (illegal strategies rebuilt from public cases). May import: everything below
it (errors, cli, flags, data, model, engine, strategies, caches); never ablate.
"""
