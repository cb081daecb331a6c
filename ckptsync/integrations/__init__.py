"""Callbacks for training frameworks: :mod:`.transformers` (Hugging Face Trainer) and :mod:`.lightning`.

Each module imports its framework only when used; ``import ckptsync`` never does.
"""
