"""The code's structure holds: layers point one way (import-linter contracts in pyproject.toml), no module imports
itself back through others, the package never reaches into launch/ or benchmarks/, ruff finds nothing, and the
code has one formatting style."""

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _tool(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / name), *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_the_layer_contracts_hold():
    result = _tool("lint-imports")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the groups of modules that import each other, directly or through others."""
    index, low, stack, on_stack, groups, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_no_module_imports_itself_back_through_others():
    graph = grimp.build_graph("p2p_dist")
    edges = {
        module: {
            target
            for target in graph.find_modules_directly_imported_by(module)
            # a package's __init__ importing its own submodules is how packages work, not a cycle
            if not target.startswith(f"{module}.")
        }
        for module in graph.modules
    }
    assert len(edges) > 40
    cycles = [group for group in _strongly_connected(edges) if len(group) > 1]
    assert cycles == []


def test_the_package_never_imports_launch_or_benchmark_scripts():
    scripts = {path.stem for folder in ("launch", "benchmarks") for path in (ROOT / folder).glob("*.py")}
    graph = grimp.build_graph("p2p_dist", include_external_packages=True)
    external = {module for module in graph.modules if not module.startswith("p2p_dist")}
    assert {"torch", "deepspeed"} <= external
    assert not external & (scripts | {"launch", "benchmarks"})


def test_ruff_finds_nothing_to_report():
    result = _tool("ruff", "check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout[-5000:]


def test_one_formatting_style_ruff_format():
    result = _tool("ruff", "format", "--check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout[-5000:]
