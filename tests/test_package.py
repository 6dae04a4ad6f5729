"""The package as a whole: its import structure and the rules every public entry shares."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rwwce

SRC = Path(rwwce.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(importer: str, node: ast.ImportFrom) -> str:
    """The absolute module name of a ``from ... import`` (relative imports included)."""
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    base = base if _is_package(importer) else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(name: str):
    """(module imported, names taken from it) for every import anywhere in the module: at the
    top, in functions, under TYPE_CHECKING; submodules taken by ``from pkg import sub`` count as
    modules."""
    tree = ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "rwwce":
                    yield alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(name, node)
            if source.split(".")[0] != "rwwce":
                continue
            names = []
            for alias in node.names:
                if f"{source}.{alias.name}" in MODULES:
                    yield f"{source}.{alias.name}", ()
                else:
                    names.append(alias.name)
            if names:
                yield source, tuple(names)


def _is_public(module: str) -> bool:
    return not any(part.startswith("_") for part in module.split("."))


def test_every_module_is_found():
    assert {"rwwce", "rwwce.metrics", "rwwce._costmath", "rwwce.integrations.huggingface"} <= set(
        MODULES
    )


def test_the_package_has_no_import_circle():
    graph = {
        name: {target for target, _ in _imports(name) if target in MODULES and target != name}
        for name in MODULES
    }
    # Tarjan's strongly connected components: a component of two or more modules is a circle.
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert circles == [], f"import circles: {circles}"


def test_no_private_name_is_taken_from_a_public_module():
    found = {
        (name, source, taken)
        for name in MODULES
        for source, names in _imports(name)
        if source != name and _is_public(source)
        for taken in names
        if taken.startswith("_") and not taken.startswith("__")
    }
    assert found == set()


def test_the_scan_sees_a_circle_and_a_private_import(tmp_path, monkeypatch):
    """The two checks above can fail: a planted circle and private import are found."""
    pkg = tmp_path / "rwwce"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from rwwce.b import _helper\n")
    (pkg / "b.py").write_text("def f():\n    from rwwce import a\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", pkg)
    monkeypatch.setattr(
        sys.modules[__name__], "MODULES", {_module_name(p): p for p in sorted(pkg.rglob("*.py"))}
    )
    with pytest.raises(AssertionError, match=r"import circles: \[\['rwwce.a', 'rwwce.b'\]\]"):
        test_the_package_has_no_import_circle()
    with pytest.raises(AssertionError, match="_helper"):
        test_no_private_name_is_taken_from_a_public_module()


# ---------------------------------------------------------------------- shared rules
def _ignore_index_entries():
    yield (
        "loss",
        lambda v: rwwce.real_world_weight_cross_entropy(
            torch.randn(2, 3), torch.tensor([0, 1]), ignore_index=v
        ),
    )
    yield "CostMonitor", lambda v: rwwce.CostMonitor([[0, 1], [1, 0]], ignore_index=v)
    yield "count_classes", lambda v: rwwce.count_classes([0, 1], 2, ignore_index=v)
    yield (
        "make_compute_metrics",
        lambda v: _hf().make_compute_metrics([[0, 1], [1, 0]], ignore_index=v),
    )


def _hf():
    pytest.importorskip("transformers")
    from rwwce.integrations import huggingface

    return huggingface


@pytest.mark.parametrize("entry", [name for name, _ in _ignore_index_entries()])
@pytest.mark.parametrize("value", [1.5, "-100", True, None])
def test_a_bad_ignore_index_is_a_type_error_everywhere(entry, value):
    if entry == "count_classes" and value is None:
        pytest.skip("count_classes takes ignore_index=None: nothing is skipped")
    call = dict(_ignore_index_entries())[entry]
    with pytest.raises(TypeError, match="ignore_index"):
        call(value)


def test_plots_never_choose_or_change_the_matplotlib_backend(tmp_path):
    """No pyplot (which picks a backend on import) and no matplotlib.use, in a fresh process."""
    pytest.importorskip("matplotlib")
    code = f"""
import sys, matplotlib, rwwce
from rwwce import calibration, metrics
before = matplotlib.rcParams._get_backend_or_none()
metrics.plot_cost_curve([0, 1, 1, 0], [0.2, 0.7, 0.6, 0.4], path={str(tmp_path / "a.png")!r})
metrics.plot_prediction_costs([0, 1, 2], [[0, 1, 1], [1, 0, 1], [5, 5, 0]], y_pred=[0, 2, 2])
calibration.plot_reliability_diagram([[0.9, 0.1], [0.3, 0.7]], [0, 1])
monitor = rwwce.CostMonitor([[0, 1], [1, 0]])
monitor.update([[2.0, 0.0], [0.0, 1.0]], [0, 1])
monitor.end_epoch()
monitor.plot({str(tmp_path / "b.png")!r})
from rwwce.experiments import plots
rows = [{{"arm": "ce", "cost": (1.0, 0.8, 1.2)}}, {{"arm": "rwwce", "cost": (0.9, 0.7, 1.1)}}]
plots.bar_chart({str(tmp_path / "c.png")!r}, rows, "cost", ylabel="cost", title="bars")
metrics = {{"confusion": [[5, 1], [0, 4]], "real_world_cost": 0.1, "error_rate": 0.1}}
records = [{{"arm": arm, "metrics": metrics}} for arm in ("ce", "rwwce")]
plots.confusion_panels({str(tmp_path / "d.png")!r}, records, ["a", "b"], title="t", highlight=(0, 1))
grid = [0.0, 0.5, 1.0]
plots.threshold_curves({str(tmp_path / "e.png")!r}, grid, {{"ce": [1, 2, 3]}}, marks={{}},
                       ylabel="cost", title="curves", points={{"ce": (0.5, 2)}})
assert "matplotlib.pyplot" not in sys.modules, "pyplot was imported"
assert matplotlib.rcParams._get_backend_or_none() == before
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    for name in "abcde":
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG", name
