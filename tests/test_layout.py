"""The floor plan (issue 24), as facts a reviewer can recompute from the import graph, and the behaviour that the
moves kept: the components and their parameters, a profile's CSV header, and what plugs in without touching
the runner (a launcher, a tracker)."""
import ast
import json
import re
import sys
from pathlib import Path

import pytest

from effprof.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "effprof"
DATA = Path(__file__).parent / "data"
# The floors, lowest first: a module may import its own floor or one below, never one above.
FLOORS = ["core", "analysis", "ops", "measure", "modules", "models", "scenarios", "components", "trackers", "runner", "studies",
          "launch", "report", "cli", "<root>"]


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """Every `import` and `from ... import` of an effprof module (function-level and TYPE_CHECKING ones too)."""
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for target in targets:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != name and target.startswith("effprof"):
                    graph[name].add(target)
    return graph


def floor(module: str) -> str:
    parts = module.split(".")
    return "<root>" if len(parts) == 1 or parts[1] == "__main__" else parts[1]


def test_no_import_circles():
    graph = import_graph()
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in graph:
        if v not in index:
            visit(v)
    assert circles == []


def test_imports_only_run_downward():
    graph = import_graph()
    unknown = sorted({floor(m) for m in graph} - set(FLOORS))
    assert unknown == [], f"modules outside the declared floors: {unknown}"
    upward = [f"{a} -> {b}" for a, targets in graph.items() for b in targets
              if FLOORS.index(floor(b)) > FLOORS.index(floor(a))]
    assert upward == []


def test_measure_and_trackers_never_import_a_component():
    graph = import_graph()
    bad = [f"{a} -> {b}" for a, targets in graph.items() if floor(a) in ("measure", "trackers")
           for b in targets if floor(b) in ("modules", "models", "components")]
    assert bad == []


def test_the_root_shows_the_architecture():
    root_modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(root_modules) <= 8, root_modules
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    largest = max(sizes, key=sizes.get)
    assert not largest.startswith("effprof.cli"), (largest, sizes[largest])


def test_pyproject_lists_every_package():
    text = (ROOT / "pyproject.toml").read_text()
    listed = set(re.findall(r'^\s+"(effprof[\w.]*)",$', text, flags=re.M))
    packages = {".".join(p.parent.relative_to(ROOT).parts) for p in PACKAGE.rglob("__init__.py")}
    assert listed == packages | {"effprof._profiles"}
    assert (ROOT / "profiles" / "projectors.yaml").is_file()  # the one source of the built-in profiles


def test_components_and_parameters_unchanged_by_the_moves():
    from effprof import list_components

    before = json.loads((DATA / "layout_components_before.json").read_text())
    now = {c.name: [p.name for p in c.params] for c in list_components()}
    for name, params in before.items():  # later issues may add, never silently drop
        assert name in now, name
        assert set(params) <= set(now[name]), (name, set(params) - set(now[name]))


def test_a_profiles_csv_header_unchanged_by_the_moves(tmp_path, fast):
    out = tmp_path / "p.csv"
    assert main(["compare", "projectors", "--tokens", "16", "--in-dim", "32", "--out-dim", "64", *fast,
                 "--flop-coverage", "--csv", str(out)]) == 0  # coverage: opt-in on cpu since issue 27
    before = (DATA / "layout_projectors_csv_header_before.txt").read_text().strip().split(",")
    now = out.read_text().splitlines()[0].split(",")
    assert [c for c in before if c not in now] == []


def test_a_new_launcher_plugs_in_without_touching_the_runner(tmp_path, fast):
    from effprof.launch import LAUNCHERS, register_launcher, unregister_launcher
    from effprof.launch.inline import measure_rows

    seen = []

    @register_launcher("reverse")
    def reverse(configs, plan, on_record=None):  # measures the rows last to first, returns them in order
        records = [None] * len(configs)
        for row in reversed(range(len(configs))):
            seen.append(configs[row].label or configs[row].component)
            records[row] = measure_rows([configs[row]])[0]
            if on_record:
                on_record(dict(records[row], row=row))
        return records

    try:
        out = tmp_path / "r.csv"
        assert main(["compare", "projectors", "--tokens", "16", "--in-dim", "32", "--out-dim", "64", *fast,
                     "--launcher", "reverse", "--csv", str(out)]) == 0
    finally:
        unregister_launcher("reverse")
    assert "reverse" not in LAUNCHERS
    assert seen[0] == "ldp (16->4)" and seen[-1] == "linear"  # the label follows --tokens 16
    labels = [line.split(",")[0] for line in out.read_text().splitlines()[1:]]
    assert labels[0] == "linear" and len(labels) == len(seen)


def test_a_new_tracker_adds_a_column_without_touching_the_runner(fast):
    from effprof.core.options import Config, RunOptions
    from effprof.launch import launch
    from effprof.trackers import Tracker, register_tracker, unregister_tracker

    @register_tracker
    class CallCount(Tracker):
        name = "test-call-count"

        def fields(self, run):
            return {"test_calls_timed": run.calls, "test_unit": run.built.unit}

    try:
        config = Config("linear", {"tokens": 4, "in_dim": 8, "out_dim": 8},
                        RunOptions(device="cpu", min_time=0.01, warmup=0.0, max_cv=1.0))
        (record,) = launch([config])
    finally:
        unregister_tracker("test-call-count")
    assert record["status"] == "ok"
    assert record["test_calls_timed"] >= record["n_calls"] > 0 and record["test_unit"] == "tok"


def test_unknown_launcher_is_one_line(capsys):
    assert main(["compare", "projectors", "--launcher", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown launcher 'nope'" in err and "inline" in err and len(err.strip().splitlines()) == 1


def ray_rows_profile(tmp_path, crash_row: str):
    """The Ray launcher tests' profile: a linear row, `crash_row` (labelled crash), a lowrank row."""
    profile = tmp_path / "rows.yaml"
    profile.write_text("rows:\n"
                       "  - {component: linear, params: {tokens: 4, in_dim: 8, out_dim: 8}}\n"
                       f"  - {crash_row}\n"
                       "  - {component: lowrank, params: {tokens: 4, in_dim: 8, out_dim: 8, rank: 2}}\n")
    return profile


class FakeRay:
    """What effprof.launch.ray asks of the `ray` module, in this process: a task runs when its result is asked
    for, and the row labelled "crash" fails as a task whose worker died does (ray.get raises)."""

    def __init__(self):
        self.calls, self.initialized = [], False

    def is_initialized(self):
        return self.initialized

    def init(self, **kwargs):
        self.calls.append(("init", kwargs))
        self.initialized = True

    def shutdown(self):
        self.calls.append(("shutdown",))
        self.initialized = False

    def cluster_resources(self):
        return {"CPU": 2.0}

    def get_gpu_ids(self):
        return []

    def cancel(self, future, force=False):
        self.calls.append(("cancel", future))

    def remote(self, max_retries=3):
        fake = self

        class Task:
            def __init__(self, fn, resources=None):
                self.fn, self.resources = fn, resources

            def options(self, **resources):
                return Task(self.fn, resources)

            def remote(self, config):
                fake.calls.append(("remote", config.label, self.resources, max_retries))
                return lambda: self.fn(config)

        return lambda fn: Task(fn)

    def get(self, future):
        return future()


def test_ray_launcher_with_a_stand_in_for_ray(tmp_path, fast, monkeypatch):
    """`compare --launcher ray` through a stand-in `ray` module (the real one: the slow test below): each row one
    task of one CPU, never retried, measured as a pool worker measures it; records in the rows' order; a task whose
    worker dies is a failed row while the others are measured; the instance started here is stopped."""
    import effprof.launch.ray as ray_launcher

    fake = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    real_measure_task = ray_launcher.measure_task

    def measure_task(config):
        if config.label == "crash":
            raise RuntimeError("The worker died unexpectedly while executing this task (exit code 7)")
        return real_measure_task(config)

    monkeypatch.setattr(ray_launcher, "measure_task", measure_task)
    crash_row = "{component: linear, params: {tokens: 4, in_dim: 8, out_dim: 8}, label: crash}"
    profile = ray_rows_profile(tmp_path, crash_row)
    out = tmp_path / "ray.json"
    assert main(["compare", str(profile), *fast, "--launcher", "ray", "--json", str(out)]) == 1
    records = json.loads(out.read_text())["records"]
    assert [r["label"] for r in records] == ["linear", "crash", "lowrank"]
    assert [r["status"] for r in records] == ["ok", "error", "ok"]
    assert "ray task failed" in records[1]["error"] and "worker died" in records[1]["error"]
    assert all(r["launcher"] == "ray" for r in records) and records[0]["ray_node"] and records[2]["ray_node"]
    assert records[0]["latency_ms_median"] > 0 and records[2]["params_total"] == 8 * 2 + 2 * 8 + 8
    assert [c[0] for c in fake.calls] == ["init", "remote", "remote", "remote", "shutdown"]
    assert fake.calls[0][1]["address"] is None  # a local instance, started and stopped here
    assert all(c[2] == {"num_gpus": 0, "num_cpus": 1} and c[3] == 0 for c in fake.calls[1:4])


@pytest.mark.slow  # CI: test_ray_launcher_with_a_stand_in_for_ray (starting Ray and its workers takes 10-15 s)
def test_ray_launcher_on_a_local_instance(tmp_path, fast):
    """`compare --launcher ray` on CPU: rows as Ray tasks on a local instance, records in the rows' order, and a
    task whose worker dies is a failed row while the others are measured."""
    pytest.importorskip("ray")
    crash = tmp_path / "crash.py"
    crash.write_text("import os\n\ndef boom(width: int = 8):\n    os._exit(7)\n")
    profile = ray_rows_profile(tmp_path, f"{{component: '{crash}:boom', label: crash}}")
    out = tmp_path / "ray.json"
    assert main(["compare", str(profile), *fast, "--launcher", "ray", "--json", str(out)]) == 1
    records = json.loads(out.read_text())["records"]
    assert [r["label"] for r in records] == ["linear", "crash", "lowrank"]
    assert [r["status"] for r in records] == ["ok", "error", "ok"]
    assert "ray task failed" in records[1]["error"]
    assert all(r["launcher"] == "ray" for r in records) and records[0]["ray_node"] and records[2]["ray_node"]
    assert records[0]["latency_ms_median"] > 0 and records[2]["params_total"] == 8 * 2 + 2 * 8 + 8


def test_the_torchrun_launcher_hands_tp_rows_to_their_ranks_and_refuses_single_rank_ones(tmp_path, capsys,
                                                                                        monkeypatch):
    """Each row goes to `measure_tp` (its ranks: spawned by the slow test below and by
    test_multigpu.py::test_run_tp_1_and_2_reports_scaling_and_communication), here a stand-in that measures the row
    in this process; a row of one rank is refused before anything starts."""
    from dataclasses import replace

    from effprof.launch import torchrun
    from effprof.runner import measure

    assert main(["compare", "mamba-lm", "--grid", "seq_len=16", "--d-model", "32", "--n-layer", "2",
                 "--device", "cpu", "--min-time", "0.02", "--warmup", "0", "--launcher", "torchrun"]) == 2
    assert "one rank" in capsys.readouterr().err
    handed = []

    def measure_tp(config):
        handed.append(config.options.tp)
        return dict(measure(replace(config, options=replace(config.options, tp=1))), tp=config.options.tp)

    monkeypatch.setattr(torchrun, "measure_tp", measure_tp)
    out = tmp_path / "tp.json"
    assert main(["compare", "mamba-lm", "--grid", "seq_len=16,8", "--d-model", "32", "--n-layer", "2", "--tp", "2",
                 "--device", "cpu", "--min-time", "0.02", "--warmup", "0", "--max-cv", "1", "--launcher",
                 "torchrun", "--json", str(out)]) == 0
    records = json.loads(out.read_text())["records"]
    assert handed == [2, 2]
    assert [(r["label"], r["status"], r["tp"]) for r in records] == [("seq_len=16", "ok", 2), ("seq_len=8", "ok", 2)]


@pytest.mark.slow  # CI: the test above, and ranks spawned by test_multigpu.py's test_run_tp_1_and_2_...
def test_the_torchrun_launcher_runs_tp_rows_in_spawned_ranks(tmp_path):
    """The test above with the row's two ranks spawned and joined over gloo."""
    out = tmp_path / "tp.json"
    assert main(["compare", "mamba-lm", "--grid", "seq_len=16", "--d-model", "32", "--n-layer", "2", "--tp", "2",
                 "--device", "cpu", "--min-time", "0.02", "--warmup", "0", "--max-cv", "1", "--launcher",
                 "torchrun", "--json", str(out)]) == 0
    (record,) = json.loads(out.read_text())["records"]
    assert record["status"] == "ok" and record["tp"] == 2 and record["tp_backend"] == "gloo"
