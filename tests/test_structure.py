"""The shape of the code: every script runs from any working directory, the shared modules import
each other without cycles, and no module grows past about 400 lines without a reason here."""
import ast
import re
import subprocess

import pytest

from conftest import REPO, load_script

import common
import profiles

PY = str(REPO / ".venv" / "bin" / "python")
SCRIPTS = sorted(p.name for p in REPO.glob("0*_*.py")) + ["profiles.py", "devices.py", "rawdata.py", "pixels.py", "reporting.py",
                                                              "store_pack.py"]
ROOMS = ("", "bench/", "sync/")    # where the repository's Python modules live
LONG = 400          # lines: a module longer than this holds more than one job


@pytest.mark.parametrize("script", SCRIPTS + ["02_hvr_augment.sh", "bench/study.py", "bench/results_doc.py",
                                              "bench/meta_params.py", "sync/sync.py"])
def test_every_script_answers_help_from_another_directory(script, tmp_path):
    cmd = [str(REPO / script), "--help"] if script.endswith(".sh") else [PY, str(REPO / script), "--help"]
    p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert len(p.stdout.splitlines()) >= 3


def modules():
    """{module name: its file} of the repository's Python modules, in every room."""
    return {p.stem: p for room in ROOMS for p in REPO.glob(f"{room}*.py")}


def local_imports(path, top=False):
    """The repository's own modules that `path` imports (at any depth of the file; top: at its
    top level only)."""
    own = set(modules())
    names = set()
    tree = ast.parse(path.read_text())
    for node in tree.body if top else ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names & own


def test_shared_modules_form_no_cycle_and_stages_import_no_stage():
    imports = {name: local_imports(path) for name, path in modules().items()}
    for stage in (m for m in imports if m[:2].isdigit()):
        assert not any(i[:2].isdigit() for i in imports[stage]), stage
    done = set()

    def visit(m, path):
        assert m not in path, f"import cycle: {' -> '.join(path + [m])}"
        if m in done:
            return
        for i in imports.get(m, ()):
            visit(i, path + [m])
        done.add(m)
    for m in imports:
        visit(m, [])
    assert imports["profiles"] == set() and imports["common"] == {"profiles"}      # make runs profiles.py bare
    assert imports["tasks"] == {"profiles"}
    assert imports["reporting"] == {"common", "tasks"} and imports["rawdata"] == {"common", "tasks"}
    assert imports["pixels"] == {"common"}
    assert imports["models"] == imports["checkpointing"] == imports["distributed"] == {"common"}
    assert imports["inference"] == {"common", "distributed", "pixels"}
    assert imports["training"] == {"checkpointing", "common", "distributed"}
    assert imports["evaluator"] == {"checkpointing", "common", "inference", "models", "pixels", "tasks"}
    assert imports["devices"] == {"common", "gpu_slots", "inference", "models", "tasks", "training"}
    assert local_imports(REPO / "devices.py", top=True) == {"common", "gpu_slots", "tasks"}   # torch's only to measure a CPU
    assert imports["gpu_slots"] == {"common"}
    assert imports["store_pack"] == {"common", "photo_stats"}       # 02 loads no torch
    assert imports["stacking"] == {"common", "photo_stats", "tasks"}  # 06 and bench's studies: no torch
    assert imports["sync"] == {"common", "origin", "remote", "units"} and imports["units"] == {"remote"}
    assert imports["origin"] == {"common", "remote"}


def stage_loads(path):
    """The numbered stages `path` loads as modules: by an import statement, or by name or file
    through a loader (importlib's import_module and spec_from_file_location, __import__, runpy)."""
    stage = re.compile(r"(^|/)\d\d_\w+(\.py)?$")
    loaders = {"import_module", "spec_from_file_location", "__import__", "run_path", "run_module", "load_script"}
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) in loaders:
            names = [c.value for a in node.args for c in ast.walk(a)
                     if isinstance(c, ast.Constant) and isinstance(c.value, str)]
        else:
            continue
        found += [f"{path.relative_to(REPO)}:{node.lineno} {n}" for n in names if stage.search(n)]
    return found


def test_bench_loads_no_stage():
    """A stage is an entry point: bench/ imports the shared modules (stacking for 06's stacks and
    blends), never a numbered script; running one as a command is another matter."""
    found = [hit for path in sorted((REPO / "bench").glob("*.py")) for hit in stage_loads(path)]
    assert not found, found


def test_no_module_over_400_lines():
    long = sorted(str(f.relative_to(REPO)) for f in modules().values() if len(f.read_text().splitlines()) > LONG)
    assert not long, f"over {LONG} lines: split them by job"


def test_reporting_and_submit_do_not_load_torch():
    code = ("import sys, importlib.util; sys.path.insert(0, sys.argv[1]); import reporting; "
            "spec = importlib.util.spec_from_file_location('s', sys.argv[1] + '/07_submit.py'); "
            "spec.loader.exec_module(importlib.util.module_from_spec(spec)); print('torch' in sys.modules)")
    assert subprocess.run([PY, "-c", code, str(REPO)], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


@pytest.mark.parametrize("stage,script", [("03", "03_jigsaw.py"), ("04", "04_finetune.py"), ("05", "05_features.py")])
def test_every_profile_setting_is_an_option_of_its_stage(stage, script):
    options = {action.dest for action in load_script(script).p._actions}
    for name, table in profiles.PROFILES.items():
        assert set(table[stage]) <= options, (name, stage, sorted(set(table[stage]) - options))


def test_make_takes_its_profile_defaults_from_the_table():
    makefile = (REPO / "Makefile").read_text()
    assert all(set(table) == {"make", "02", "03", "04", "05"} for table in profiles.PROFILES.values())
    assert all(set(table["make"]) == {"nets", "seeds"} for table in profiles.PROFILES.values())
    assert "NETS ?= $(call profile_word,nets)" in makefile and "SEEDS ?= $(call profile_word,seeds)" in makefile
    assert all(set(table["02"]) == {"size"} for table in profiles.PROFILES.values())     # 02_hvr_augment.sh reads it


def test_no_head_column_is_spelled_outside_tasks():
    """05's feature columns (target_0_mean) and eval.csv's (rmse_target) are built by tasks.py."""
    spelled = re.compile(r"\b(target|onehot|sortingdate|word2vec)_(\d+|\{[a-z]+\})_(mean|max|min|var)\b"
                         r"|\brmse_(target|onehot|sortingdate|\{)")
    found = [f"{path.relative_to(REPO)}:{n}" for path in modules().values() if path.name != "tasks.py"
             for n, line in enumerate(path.read_text().splitlines(), 1) if spelled.search(line)]
    assert not found, found


def test_every_stage_runs_through_one_skeleton():
    """Each stage reads its settings with common.parse (which also reads the revision the stage
    started on) and lives through a common.Stage (DONE dropped first; provenance, then DONE,
    last): none parses, stamps or reads the folds by hand."""
    stages = [REPO / s for s in SCRIPTS if s[:2].isdigit()] + [REPO / "rawdata.py", REPO / "store_pack.py"]
    for path in stages:
        text = path.read_text()
        assert re.search(r"\bparse\(p, ", text), f"{path.name}: settings not read by common.parse"
        assert "Stage(" in text, f"{path.name}: no common.Stage"
        for by_hand in (".parse_args(", "mark_done(", "write_provenance(", "start_stage("):
            assert by_hand not in text, f"{path.name}: {by_hand} by hand"
    readers = [f"{path.relative_to(REPO)}" for path in modules().values() if path.name not in ("common.py", "01_sgkfold.py")
               and re.search(r"read_csv\([^)]*(fold_csv|oof_fold)", path.read_text())]
    assert not readers, f"fold files read outside common.read_fold / read_oof_fold: {readers}"


def test_run_names_have_one_grammar_both_ways():
    for task, fold, seed in (("multi", "0", 0), ("target", "all", 2), ("word2vec", "1", 9)):
        assert common.parse_run_name(common.run_name(task, fold, seed)) == (task, fold, seed)
    for other in ("multi_0_s0", "multi_0_s01", "multi_0_s", "multi", "a_b_c", "multi_0_s1_x"):
        assert common.parse_run_name(other) is None, other
