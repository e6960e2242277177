"""Imports go in one direction (issue #24): a module imports from its own layer or lower ones.

Layers, bottom to top: ops -> data -> models -> train -> (export | eval) -> (api | embed | cli).
Every module under terrafm_jax/ is parsed with `ast` (imports at module level and inside
functions, `import x` and `from x import y`, relative imports resolved) into a module import
graph; the test fails on an import from a lower layer into a higher one and on an import cycle.
Edges that still break a rule are listed in ALLOWED, each with why; an allowed edge that no longer
exists, or no longer breaks a rule, fails the test too, so the list can only shrink.
"""
from __future__ import annotations

import ast
import pathlib

PACKAGE = "terrafm_jax"
ROOT = pathlib.Path(__file__).resolve().parents[1] / PACKAGE

# Subpackage (or package-level module) -> layer.
SUBPACKAGE_LAYERS = {"ops": 0, "data": 1, "models": 2, "train": 3, "export": 4, "eval": 4,
                     "api": 5, "embed": 5}
# Command-line entry points (`cli.py`, `__main__.py` of any subpackage) are the top layer.
TOP_LAYER = 5
ENTRY_POINT_NAMES = ("cli", "__main__")
# Package-level modules below every layer: they import nothing from the package, anyone may import
# them.
BOTTOM_MODULES = {f"{PACKAGE}.errors", f"{PACKAGE}.platforms", f"{PACKAGE}.config_schema",
                  f"{PACKAGE}.protocol",
                  f"{PACKAGE}.console"}
BOTTOM_LAYER = -1
# terrafm_jax/__init__.py: the lazy `terrafm_jax.load` front door (imports api on first use).
EXEMPT = {PACKAGE}

# (importer, imported) edges that still break a rule; each needs a larger redesign (issue #24).
# Only delete from this set: test_allowed_edges_still_break_a_rule fails on a stale entry.
ALLOWED: set[tuple[str, str]] = set()


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
  return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(name: str, modules) -> str | None:
  """The deepest package module that `name` names (a.b.c -> a.b when c is not a module)."""
  parts = name.split(".")
  while parts:
    candidate = ".".join(parts)
    if candidate in modules:
      return candidate
    parts.pop()
  return None


def imports_of(module: str, source: str, is_package: bool, modules) -> set[str]:
  """The package modules that `module` (source text `source`) imports anywhere in its file."""
  here = module.split(".") if is_package else module.split(".")[:-1]
  found = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      targets = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      if node.level:  # relative: `.` is this module's package, each further dot one level up
        base = here[:len(here) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
      else:
        prefix = node.module
      # `from pkg import mod` imports pkg.mod; `from mod import name` imports mod.
      targets = [f"{prefix}.{alias.name}" for alias in node.names]
    else:
      continue
    for target in targets:
      if target.split(".")[0] != PACKAGE:
        continue
      resolved = _resolve(target, modules)
      if resolved is not None and resolved != module and resolved not in EXEMPT:
        found.add(resolved)
  return found


def import_graph() -> dict[str, set[str]]:
  modules = _modules()
  return {m: imports_of(m, p.read_text(), p.name == "__init__.py", modules)
          for m, p in modules.items() if m not in EXEMPT}


def layer(module: str) -> int:
  if module in BOTTOM_MODULES:
    return BOTTOM_LAYER
  parts = module.split(".")
  if parts[-1] in ENTRY_POINT_NAMES:
    return TOP_LAYER
  assert len(parts) >= 2 and parts[1] in SUBPACKAGE_LAYERS, (
      f"{module} has no layer: add its subpackage to SUBPACKAGE_LAYERS or it to BOTTOM_MODULES")
  return SUBPACKAGE_LAYERS[parts[1]]


def strongly_connected_components(graph: dict[str, set[str]]) -> list[list[str]]:
  """Tarjan's algorithm (iterative); only the components that hold a cycle."""
  index, low, on_stack, stack, out = {}, {}, set(), [], []

  def visit(node):
    index[node] = low[node] = len(index)
    stack.append(node)
    on_stack.add(node)
    return node, iter(sorted(graph.get(node, ())))

  for root in sorted(graph):
    if root in index:
      continue
    work = [visit(root)]
    while work:
      node, children = work[-1]
      for child in children:
        if child not in index:
          work.append(visit(child))
          break
        if child in on_stack:
          low[node] = min(low[node], index[child])
      else:
        work.pop()
        if work:
          low[work[-1][0]] = min(low[work[-1][0]], low[node])
        if low[node] == index[node]:
          component = []
          while True:
            member = stack.pop()
            on_stack.discard(member)
            component.append(member)
            if member == node:
              break
          if len(component) > 1 or node in graph.get(node, ()):
            out.append(sorted(component))
  return out


def _edges(graph) -> set[tuple[str, str]]:
  return {(a, b) for a, targets in graph.items() for b in targets}


def _without_allowed(graph):
  return {a: {b for b in targets if (a, b) not in ALLOWED} for a, targets in graph.items()}


def _cycle_edges(graph) -> set[tuple[str, str]]:
  edges = set()
  for component in strongly_connected_components(graph):
    members = set(component)
    edges |= {(a, b) for a, b in _edges(graph) if a in members and b in members}
  return edges


def test_the_graph_is_read():
  graph = import_graph()
  assert len(graph) > 50, f"only {len(graph)} modules found under {ROOT}"
  assert "terrafm_jax.models.axes" in graph["terrafm_jax.train.device_crops"]
  # A function-level import counts.
  assert "terrafm_jax.eval.run_hooks" in graph["terrafm_jax.train.cli"]


def test_relative_imports_resolve():
  modules = {"terrafm_jax.data", "terrafm_jax.data.contract", "terrafm_jax.data.pipeline",
             "terrafm_jax.models", "terrafm_jax.models.axes", "terrafm_jax.errors"}
  source = ("from . import contract\nfrom .. import errors\nfrom ..models.axes import BATCH\n"
            "def f():\n  from ..models import axes\n")
  assert imports_of("terrafm_jax.data.pipeline", source, False, modules) == {
      "terrafm_jax.data.contract", "terrafm_jax.errors", "terrafm_jax.models.axes"}
  assert imports_of("terrafm_jax.data", "from .contract import X\n", True, modules) == {
      "terrafm_jax.data.contract"}


def test_bottom_modules_import_nothing_from_the_package():
  graph = import_graph()
  bad = sorted((m, t) for m in BOTTOM_MODULES for t in graph.get(m, ()))
  assert not bad, "bottom-layer modules must not import from terrafm_jax: " + ", ".join(
      f"{a} -> {b}" for a, b in bad)


def test_no_import_from_a_lower_layer_into_a_higher_one():
  graph = import_graph()
  bad = sorted((a, b) for a, b in _edges(graph) if layer(b) > layer(a) and (a, b) not in ALLOWED)
  assert not bad, "upward imports (a module may import its own layer or lower ones only):\n  " + (
      "\n  ".join(f"{a} (layer {layer(a)}) -> {b} (layer {layer(b)})" for a, b in bad))


def test_no_import_cycle():
  pruned = _without_allowed(import_graph())
  cycles = strongly_connected_components(pruned)
  detail = []
  for component in cycles:
    members = set(component)
    edges = sorted((a, b) for a, b in _edges(pruned) if a in members and b in members)
    detail.append(" <-> ".join(component) + "\n    edges: " +
                  ", ".join(f"{a} -> {b}" for a, b in edges))
  assert not cycles, "import cycles:\n  " + "\n  ".join(detail)


def test_allowed_edges_still_break_a_rule():
  """The ratchet: an ALLOWED edge the code no longer has, or that is neither upward nor part of
  a cycle any more, must be deleted from ALLOWED."""
  graph = import_graph()
  edges = _edges(graph)
  gone = sorted(e for e in ALLOWED if e not in edges)
  assert not gone, "ALLOWED edges no longer in the code; delete them from ALLOWED: " + ", ".join(
      f"{a} -> {b}" for a, b in gone)
  in_cycle = _cycle_edges(graph)
  fine = sorted((a, b) for a, b in ALLOWED if layer(b) <= layer(a) and (a, b) not in in_cycle)
  assert not fine, "ALLOWED edges that break no rule; delete them from ALLOWED: " + ", ".join(
      f"{a} -> {b}" for a, b in fine)


def test_no_test_hooks_in_the_production_code():
  """Faults and recorders come from the tests (tests/train/fault_train.py, tests/embed/
  killed_embed.py) through the trainer's hooks, never from switches in the package."""
  import pathlib
  root = pathlib.Path(__file__).resolve().parents[1] / PACKAGE
  banned = ("os._exit", "die_after", "nan_at_step", "record_tiles", "debug_stop", "c.debug")
  found = [f"{p.relative_to(root.parent)}: {b}" for p in root.rglob("*.py")
           for b in banned if b in p.read_text(encoding="utf-8")]
  assert not found, found
  from terrafm_jax.train import default_config
  assert "debug" not in default_config.get_base_config("Mu/8")
