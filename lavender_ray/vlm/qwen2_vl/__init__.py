"""Qwen2-VL: the adapter (`adapter.py`), its geometry (`geometry.py`) and its
tiny model (`tiny.py`)."""
