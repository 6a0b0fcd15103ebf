"""The library (``sb3_pgext`` and its algorithms) apart from the tooling (the RL Zoo plugin and the benchmark suite)."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import sb3_pgext

PACKAGE = Path(sb3_pgext.__file__).parent

#: what ``import sb3_pgext`` must not load: the tooling's own modules and the packages only the tooling needs
TOOLING_PACKAGES = ("rl_zoo3", "optuna", "ray", "rliable", "matplotlib", "seaborn", "huggingface_hub")
TOOLING_MODULES = ("sb3_pgext.zoo", "sb3_pgext.suite")

#: what no library module may import, at any level (inside functions too)
FORBIDDEN_IMPORTS = TOOLING_MODULES + TOOLING_PACKAGES

#: the library's modules: the algorithms' packages, the package's __init__ and the registry
LIBRARY_PACKAGES = ("common", "ppokl", "cvpg", "offpac")
LIBRARY_FILES = ("__init__.py", "registry.py")

#: "path relative to sb3_pgext" -> {forbidden module it imports: the reason it must}; none today
ALLOWED_EXCEPTIONS: dict[str, dict[str, str]] = {}


def _imported_modules(code: str) -> list[str]:
    """The modules a fresh interpreter imports running ``code``, in order, from ``-X importtime``'s report."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        timeout=300,
    )
    assert result.returncode == 0, f"{code!r} failed:\n{result.stderr[-3000:]}"
    modules = []
    for line in result.stderr.splitlines():  # "import time: self [us] | cumulative | imported package"
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":  # the header
                modules.append(name)
    return modules


def _is_within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == package or module.startswith(package + ".") for package in packages)


def test_import_loads_no_tooling():
    modules = _imported_modules("import sb3_pgext")
    # positive control: the report is read (were it empty or misparsed, the check below would pass vacuously)
    for needed in ("sb3_pgext", "stable_baselines3", "torch", "gymnasium"):
        assert needed in modules, f"{needed} missing from the modules `import sb3_pgext` reports: {modules[:20]}..."
    tooling = [module for module in modules if _is_within(module, TOOLING_PACKAGES + TOOLING_MODULES)]
    assert not tooling, f"`import sb3_pgext` imports tooling: {sorted({'.'.join(name.split('.')[:2]) for name in tooling})}"


def _library_files() -> list[Path]:
    files = [PACKAGE / name for name in LIBRARY_FILES]
    for package in LIBRARY_PACKAGES:
        files += sorted((PACKAGE / package).rglob("*.py"))
    return files


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """
    (line, module) for every import in ``source`` at any level: ``import x``, ``from x import y`` (as ``x`` and
    ``x.y``, since y may be a submodule), relative imports resolved against ``module``, and
    ``importlib.import_module("x")`` / ``__import__("x")`` with a literal name.
    """
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            found.append((node.lineno, origin))
            found += [(node.lineno, f"{origin}.{alias.name}") for alias in node.names if alias.name != "*"]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            function = node.func
            called = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", None)
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def _forbidden_imports(path: Path) -> list[str]:
    relative = path.relative_to(PACKAGE).as_posix()
    allowed = ALLOWED_EXCEPTIONS.get(relative, {})
    imports = _imports(path.read_text(encoding="utf-8"), _module_name(path), path.name == "__init__.py")
    return [
        f"{relative}:{line} imports {name}"
        for line, name in imports
        if _is_within(name, FORBIDDEN_IMPORTS) and not any(_is_within(name, (exception,)) for exception in allowed)
    ]


def test_library_modules_import_no_tooling():
    files = _library_files()
    # the scan finds the modules (a moved package would otherwise leave nothing to check)
    assert len(files) >= 25, files
    for package in LIBRARY_PACKAGES:
        assert any(path.parent.name == package and path.name != "__init__.py" for path in files), package
    problems = [problem for path in files for problem in _forbidden_imports(path)]
    assert not problems, "the library imports tooling:\n" + "\n".join(problems)
    for relative in ALLOWED_EXCEPTIONS:  # an exception listed for a file that no longer exists is stale
        assert (PACKAGE / relative).is_file(), relative


@pytest.mark.parametrize(
    "source, module",
    [
        ("import rl_zoo3", "rl_zoo3"),
        ("def f():\n    from optuna.samplers import TPESampler", "optuna.samplers"),
        ("from sb3_pgext import zoo", "sb3_pgext.zoo"),
        ("from ..suite import runner", "sb3_pgext.suite.runner"),
        ("import importlib\nimportlib.import_module('ray.tune')", "ray.tune"),
        ("def f():\n    return __import__('rliable')", "rliable"),
    ],
)
def test_the_scan_sees_every_form_of_import(source, module):
    """The scan above flags imports written in each of these ways (inside sb3_pgext/common/example.py)."""
    imports = [name for _, name in _imports(source, "sb3_pgext.common.example", is_package=False)]
    assert module in imports, imports
    assert any(_is_within(name, FORBIDDEN_IMPORTS) for name in imports)
