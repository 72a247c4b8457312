"""Mllama / Llama-3.2-Vision: the adapter (`adapter.py`), its geometry (`geometry.py`) and its
tiny model (`tiny.py`)."""
