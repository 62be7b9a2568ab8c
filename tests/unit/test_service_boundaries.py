"""No service imports another, not even for a type, and common/ imports none: what two services share
is a contract in common/.

Read from the source with ast, so an import inside a function or under TYPE_CHECKING counts too."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = frozenset({"gateway", "sms_service", "email_service", "conversation_service"})


def imported_packages(path: Path) -> set[str]:
    packages = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            packages |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            packages.add(node.module.split(".")[0])
    return packages


@pytest.mark.parametrize("package", sorted(SERVICES | {"common"}))
def test_a_package_imports_no_service_but_its_own(package: str) -> None:
    others = SERVICES - {package}
    offending = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & others)
        for path in sorted((ROOT / package).rglob("*.py"))
    }

    assert {path: packages for path, packages in offending.items() if packages} == {}


def test_the_walk_sees_an_import_inside_a_function(tmp_path: Path) -> None:
    # The gateway's OpenAPI once took the read models from conversation_service: the walk must see that.
    source = tmp_path / "probe.py"
    source.write_text("def f() -> None:\n    from conversation_service.models import MessageView\n")

    assert "conversation_service" in imported_packages(source)
