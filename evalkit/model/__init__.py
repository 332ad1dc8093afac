"""model/: the contract between the trainer and the engine.

The GPT (gpt.py) and its optional record features (layers.py), quantization (quant.py),
the .ptz artifact format (artifact.py), the baseline script's int8 export (baseline.py)
and the LoRA adapters of test-time training (lora.py). The trainer imports these; they
import nothing above them: only evalkit.errors and each other.
"""
