"""The data layer's module structure: no import cycles, and loading pulls in neither packing, the demo renderer
nor the backend that was not chosen."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import p2p_dist.data

DATA = Path(p2p_dist.data.__file__).parent
ROOT = DATA.parents[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of p2p_dist.data it imports, at module level or inside functions (ancestor packages,
    which Python imports first anyway, left out)."""
    modules = {module_name(path): path for path in DATA.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(f"{target}."):
                    imported.add(target)
        graph[name] = imported
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for module in graph[todo.pop()] - seen:
            seen.add(module)
            todo.append(module)
    return seen


def test_no_module_of_the_data_layer_imports_itself_back():
    graph = import_graph()
    assert "p2p_dist.data.loaders.contract" in graph and "p2p_dist.data.shards.format" in graph
    cyclic = sorted(module for module in graph if module in reachable(graph, module))
    assert cyclic == []


def test_loaders_depend_on_reading_shards_only():
    graph = import_graph()
    loaders = [module for module in graph if module.startswith("p2p_dist.data.loaders")]
    for module in loaders:
        assert not {
            dep
            for dep in reachable(graph, module)
            if dep.startswith(
                (
                    "p2p_dist.data.demo",
                    "p2p_dist.data.shards.pack",
                    "p2p_dist.data.shards.verify",
                    "p2p_dist.data.sources",
                )
            )
        }, module
    for module in ("p2p_dist.data.loaders.contract", "p2p_dist.data.loaders.dali", "p2p_dist.data.loaders.webdataset"):
        assert not {
            dep
            for dep in reachable(graph, module)
            if dep.startswith("p2p_dist.data.loaders.") and dep != "p2p_dist.data.loaders.contract"
        }, module


def test_a_dali_loader_loads_neither_webdataset_nor_the_scene_renderer(marker_shards):
    code = f"""
import json, sys
import p2p_dist.data.loaders.build as build
imported = set(sys.modules)
loader = build.build_loader({str(marker_shards)!r}, "train", backend="dali", batch_size=2, num_workers=1,
                            load_size=40, crop_size=32)
next(iter(loader.epoch(0)))
print(json.dumps({{"import": sorted(imported), "built": sorted(sys.modules)}}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    modules = json.loads(result.stdout.splitlines()[-1])
    for stage, names in modules.items():
        loaded = {name.partition(".")[0] for name in names} | set(names)
        assert "webdataset" not in loaded, stage
        assert not loaded & {"p2p_dist.data.demo.scenes", "p2p_dist.data.shards.pack", "p2p_dist.data.sources"}, stage
    assert "nvidia.dali" not in modules["import"] and "nvidia.dali" in modules["built"]
