"""The project selector shown above the tabs."""
from __future__ import annotations

import gradio as gr

from ..store import Store


def build(store: Store) -> gr.Dropdown:
    names = [p["name"] for p in store.list_projects()]
    with gr.Row():
        project = gr.Dropdown(names, value=names[0] if names else None, label="Project",
                              allow_custom_value=True, scale=3)
        new_name = gr.Textbox(label="New project", placeholder="name", scale=2)
        create = gr.Button("Create project", scale=1)

    def on_create(name: str):
        try:
            store.create_project(name.strip())
        except ValueError as exc:
            raise gr.Error(str(exc))
        names = [p["name"] for p in store.list_projects()]
        return gr.Dropdown(choices=names, value=name.strip()), ""

    create.click(on_create, [new_name], [project, new_name], api_name="create_project")
    return project


def loader(store: Store, project: gr.Dropdown):
    """(fn, inputs, outputs) for the app's page load: the choices above are those of startup,
    so a reload would not offer projects created since."""
    def fresh():
        return gr.Dropdown(choices=[p["name"] for p in store.list_projects()])
    return fresh, None, [project]
