"""No unsafe deserialisation anywhere: checkpoints load with weights_only=True, features and
predictions are NPZ/Parquet/CSV without pickle, no eval/exec of anything. The scan reads every
tracked Python and shell file, so a new stage is covered the day it lands."""
import re
import subprocess

import pytest

from conftest import REPO

FORBIDDEN = {
    r"\bimport pickle\b|\bfrom pickle\b|\bcPickle\b|\bdill\b|\bjoblib\.load\b": "pickle-based (de)serialisation",
    r"allow_pickle\s*=\s*True": "NPZ/NPY with pickled objects",
    r"(?<![\w.])eval\(|(?<![\w.])exec\(": "eval/exec",
    r"yaml\.load\(|yaml\.unsafe_load": "unsafe YAML",
    r"pd\.read_pickle|\.to_pickle\(": "pandas pickle",
}


def tracked(*suffixes):
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    return [REPO / f for f in files if f.endswith(suffixes) and (REPO / f).is_file()]


def code_lines(path):
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        stripped = line.split("#", 1)[0] if path.suffix == ".py" else line
        yield n, stripped


@pytest.mark.parametrize("pattern,what", FORBIDDEN.items())
def test_no_unsafe_deserialisation(pattern, what):
    hits = [f"{p.relative_to(REPO)}:{n}" for p in tracked(".py", ".sh", ".mk") if p.name != "test_safety.py"
            for n, line in code_lines(p) if re.search(pattern, line)]
    assert not hits, f"{what}: {hits}"


def test_every_torch_load_is_weights_only():
    calls = [(p, n, line) for p in tracked(".py") if p.name != "test_safety.py"
             for n, line in code_lines(p) if "torch.load(" in line]
    assert calls, "expected the checkpoint loader to be found"
    bad = [f"{p.relative_to(REPO)}:{n}" for p, n, line in calls if "weights_only=True" not in line]
    assert not bad, f"torch.load without weights_only=True: {bad}"
