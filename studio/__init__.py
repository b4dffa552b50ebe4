"""Qwen Image Edit Studio: curate edit pairs, fine-tune LoRAs, edit and compare."""

__version__ = "0.1.0"
