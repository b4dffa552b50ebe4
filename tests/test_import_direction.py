"""The arrows of docs/design.md, read from the code's own imports (function-level ones too):
a forbidden import anywhere, directly or through another module, fails here."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "studio"
# The training program: what `python -m studio.trainer` runs on a cluster node.
PROGRAM = "studio.trainer.__main__"
JOBS = ("studio.jobs", "studio.recipe")
STORE = ("studio.store",)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """Every studio module `name` imports, at any depth of its code."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import mod` imports pkg.mod when that is a module.
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in known)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports_of(path, name, known) for name, path in found.items()}


def reachable(graph, start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def offenders(graph, sources, forbidden) -> list[str]:
    return sorted(f"{s} -> {t}" for s in sources for t in graph[s]
                  if t.startswith(forbidden) and not s.startswith(forbidden))


def test_the_graph_sees_real_imports(graph):
    # The reader itself must work: known arrows are found, relative and lazy ones included.
    assert "studio.trainer.checkpoint" in graph["studio.trainer.loop"]
    assert "studio.engine.editor" in graph["studio.ui.edit_tab"]
    assert "studio.store" in reachable(graph, "studio.ui.app")


def test_nothing_below_the_ui_imports_it(graph):
    below = [m for m in graph if not m.startswith(("studio.ui", "studio.cli", "studio.__main__"))]
    assert offenders(graph, below, ("studio.ui", "studio.cli")) == []


def test_the_training_program_needs_no_store_jobs_or_ui(graph):
    program = reachable(graph, PROGRAM) | {PROGRAM}
    bad = sorted(m for m in program if m.startswith(STORE + JOBS + ("studio.ui", "studio.cli")))
    assert bad == [], f"the training program reaches {bad}"


def test_the_trainer_package_is_the_training_program_only(graph):
    trainer = [m for m in graph if m.startswith("studio.trainer")]
    assert offenders(graph, trainer, STORE + JOBS + ("studio.ui", "studio.cli")) == []


def test_engine_dataset_and_store_do_not_import_jobs_or_trainer(graph):
    lower = [m for m in graph if m.startswith(("studio.engine", "studio.dataset") + STORE)]
    assert offenders(graph, lower, JOBS + ("studio.trainer",)) == []


def test_the_dataset_rules_and_the_store_do_not_import_the_engine(graph):
    lower = [m for m in graph if m.startswith(("studio.dataset",) + STORE)]
    assert offenders(graph, lower, ("studio.engine",)) == []


def test_the_store_calls_no_dataset_code(graph):
    assert offenders(graph, [m for m in graph if m.startswith(STORE)], ("studio.dataset",)) == []
