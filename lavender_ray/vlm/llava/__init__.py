"""LLaVA-style VLMs (LLaVA-1.5): the adapter (`adapter.py`), its geometry (`geometry.py`) and its
tiny model (`tiny.py`)."""
