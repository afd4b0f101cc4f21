"""The package's layout is its architecture: imports point down the stages, there are no
import cycles, and the pipeline and providers never touch aiohttp's server side.

Every import is read from the source (module level, inside functions and under
`TYPE_CHECKING` alike), so a cycle hidden behind a type-only import counts too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gateway"

# Lower layers never import higher ones. Within a layer, imports may go either way as long
# as they make no cycle. The config sits above the providers because each provider's config
# model lives in the provider's own file and the config's union of them comes from the
# provider registry.
LAYERS: dict[str, int] = {
    "base": 0,  # errors, failures, config_base, metrics, sse, tokens, periodic
    "providers": 1,
    "config": 2,  # config, logs (which reads the config's secrets)
    "limits": 3,
    "store": 3,
    "usage": 3,
    "pipeline": 4,
    "http": 5,
    "ingress": 6,
    "ops": 7,
    "server": 8,
    "__main__": 9,
}
TOP_LEVEL_LAYER = {"gateway.config": "config", "gateway.logs": "config"}
NO_AIOHTTP_WEB = ("pipeline", "providers")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> str:
    if module in TOP_LEVEL_LAYER:
        return TOP_LEVEL_LAYER[module]
    parts = module.split(".")
    if len(parts) < 2:
        return "base"
    if parts[1] in LAYERS:
        return parts[1]
    return "base"  # a top-level module such as gateway.config


def imports_of(path: Path, module: str) -> set[str]:
    """Every module `path` imports, resolved to full dotted names."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            # `from gateway.x import y` may name a submodule y.
            found.update(f"{prefix}.{alias.name}" for alias in node.names)
    return found


def gateway_graph() -> dict[str, set[str]]:
    known = modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        targets = {t for t in imports_of(path, name) if t in known and t != name}
        # A package's __init__ is imported on the way to any module inside it; that edge is
        # not a dependency of its own (the __init__ modules hold docstrings only).
        graph[name] = {t for t in targets if not name.startswith(t + ".")}
    return graph


def test_the_walk_sees_the_package() -> None:
    graph = gateway_graph()
    assert "gateway.pipeline.request" in graph
    assert "gateway.pipeline.attempts" in graph["gateway.pipeline.request"]
    assert "gateway.providers.upstream" in graph["gateway.pipeline.request"]


def test_imports_point_down_the_stages() -> None:
    upward = []
    for module, targets in gateway_graph().items():
        for target in targets:
            if LAYERS[layer_of(target)] > LAYERS[layer_of(module)]:
                upward.append(f"{module} ({layer_of(module)}) imports {target}")
    assert not upward, "imports that point up:\n" + "\n".join(sorted(upward))


def test_there_are_no_import_cycles() -> None:
    graph = gateway_graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("folder", NO_AIOHTTP_WEB)
def test_pipeline_and_providers_never_import_aiohttp_web(folder: str) -> None:
    offenders = []
    for module, path in modules().items():
        if layer_of(module) != folder:
            continue
        for name in imports_of(path, module):
            if name in ("aiohttp.web", "aiohttp.web_request", "aiohttp.web_response") or (
                name.startswith("aiohttp.web")
            ):
                offenders.append(f"{module} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_the_readme_layout_names_every_folder() -> None:
    readme = (PACKAGE.parent / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1]
    folders = sorted(
        p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()
    )
    missing = [f for f in folders if f"{f}/" not in layout]
    assert not missing, f"README's Layout section does not describe: {missing}"


_SERVE_WITHOUT_KEYS = """
import sys
from gateway.config import load_config
from gateway.server.serving import GatewayServer

GatewayServer(load_config(sys.argv[1]))
print(",".join(sorted(m for m in ("sqlite3", "redis") if m in sys.modules)))
"""


def test_a_gateway_without_keys_db_or_redis_never_imports_them(tmp_path: Path) -> None:
    """Idle memory: SQLite (the keys store, about 1 MB) and the Redis client (about 9 MB)
    are imported only by a config that uses them."""
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "providers: {mock: {type: mock}}\nmodels: {m: {provider: mock}}\ntiers: {fast: [m]}\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", _SERVE_WITHOUT_KEYS, str(config)],
        capture_output=True,
        text=True,
        check=True,
        cwd=PACKAGE.parent,
    )
    assert done.stdout.strip() == ""
