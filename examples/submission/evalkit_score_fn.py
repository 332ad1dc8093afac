"""--score-fn adapter for train_gpt_mini.py: the black-box audit runs the entry's own eval loop.

    ARTIFACT=final_model.int6.ptz NGRAM=hashed python -m evalkit.audit \
        --score-fn examples/submission/evalkit_score_fn.py:score --val 'data/*_val_*.bin' --tokenizer tok.model
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_gpt_mini as entry  # noqa: E402

_models = {}


def score(tokens):
    """(n,) ids -> (n - 1,) NLL in nats; also (B, n) -> (B, n - 1), B streams side by side."""
    path = os.environ.get("ARTIFACT", "final_model.int6.ptz")
    if path not in _models:
        _models[path] = entry.load_export(path)
    return entry.eval_nll(_models[path], tokens, entry.Hyperparameters())  # NGRAM etc. from the environment
