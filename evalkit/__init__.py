"""evalkit: exact, score-first evaluation of parameter-golf artifacts."""

__version__ = "0.1.0"
