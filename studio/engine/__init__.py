"""Runs models: loading Qwen-Image-Edit folders, devices, editing, the demo model."""
