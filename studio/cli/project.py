"""`project create NAME`, `project list`."""
from __future__ import annotations

from ..paths import projects_dir
from ..store import Store


def register(sub) -> None:
    p = sub.add_parser("project", help="create and list projects")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    create = verbs.add_parser("create", help="create a project")
    create.add_argument("name")
    create.set_defaults(handler=create_project)
    listing = verbs.add_parser("list", help="list projects")
    listing.set_defaults(handler=list_projects)


def open_store(args) -> Store:
    return Store(projects_dir(args.projects_dir))


def create_project(args) -> int:
    store = open_store(args)
    project = store.create_project(args.name)
    print(f"created project {project['name']} in {store.project_dir(project['name'])}")
    return 0


def list_projects(args) -> int:
    projects = open_store(args).list_projects()
    if not projects:
        print("no projects yet: python -m studio project create NAME")
    for project in projects:
        print(f"{project['name']}\t{project['created_at']}")
    return 0
