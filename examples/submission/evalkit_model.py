"""--model adapter for train_gpt_mini.py: evalkit scores the entry's own export with its own GPT.

    python -m evalkit.score final_model.int6.ptz --model examples/submission/evalkit_model.py:load \
        --val 'data/*_val_*.bin' --tokenizer tok.model --strategy sliding --seq-len 128 --stride 64
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_gpt_mini as entry  # noqa: E402


def load(artifact_path, device):
    return entry.load_export(artifact_path).to(device)  # forward(ids) -> (B, T, V) logits
