"""ablate/: `python -m evalkit.ablate`, many strategies on one artifact.

grid.py (the run grid from TOML or flags), stats.py (paired per-document statistics),
plots.py, runcache.py (resumable runs) and command.py (the command line). May import:
everything below it (errors, cli, flags, data, model, engine, strategies, caches);
never audit.
"""
