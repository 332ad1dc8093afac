"""data/: the validation split as tokens and bytes.

Challenge-format shards and the byte rule (shards.py), SentencePiece loading, training
and encoding (tokenizer.py), documents -> shards and `python -m evalkit.data` (prepare.py),
and the embedded demo corpus (corpus.py). May import: evalkit.errors, evalkit.cli.
Never imports model, engine, strategies, audit or ablate.
"""
