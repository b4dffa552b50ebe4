"""The browser app (Gradio). Draws and wires events only: work is done by engine/store."""
