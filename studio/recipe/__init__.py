"""The bridge to the reference recipe (DiffSynth-Studio's train.py, MindSpeed-MM's script):
export a project as a ready-to-run recipe, and follow such a run from its log."""
