"""A tab whose feature has not landed yet: it says so instead of pretending to work."""
import gradio as gr


def build(name: str, what: str) -> None:
    gr.Markdown(f"**{name}: coming soon.** This tab will cover {what}. "
                "It is not available in this version.")
