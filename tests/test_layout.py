"""The dependency direction, checked on the import statements: worker/engine is a pure library (no web,
database or queue code, nothing of backend or of the Celery entry point); backend imports the engine
only, never worker/celery_app.py, which sits on top (a thin wrapper over backend/jobs). That importing
every engine module loads none of that: test_model.py's test_engine_imports_no_web_db_or_queue_code."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "worker" / "engine"
WEB_DB_QUEUE = ("fastapi", "starlette", "sqlalchemy", "alembic", "celery", "kombu", "redis", "psycopg")


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module a file imports (relative imports resolved)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            module = (
                f"{base}.{node.module}" if node.level and node.module else base if node.level else node.module
            )
            names.add(module)
    return names


def top(name: str, parts: int = 1) -> str:
    return ".".join(name.split(".")[:parts])


def test_engine_modules_import_only_the_engine_and_libraries():
    files = sorted(ENGINE.rglob("*.py"))
    assert len(files) > 10
    for path in files:
        for name in imported_modules(path):
            assert top(name) not in WEB_DB_QUEUE, f"{path.relative_to(ROOT)} imports {name}"
            assert top(name) != "backend", f"{path.relative_to(ROOT)} imports {name}"
            if top(name) == "worker":
                assert top(name, 2) == "worker.engine", f"{path.relative_to(ROOT)} imports {name}"


def test_backend_imports_only_the_engine_of_worker():
    for path in sorted((ROOT / "backend").rglob("*.py")):
        for name in imported_modules(path):
            if top(name) == "worker":
                assert top(name, 2) == "worker.engine", f"{path.relative_to(ROOT)} imports {name}"


def test_worker_holds_only_the_engine_and_the_celery_entry_point():
    entries = {p.name for p in (ROOT / "worker").iterdir() if p.name != "__pycache__"}
    assert entries == {"__init__.py", "engine", "celery_app.py"}
