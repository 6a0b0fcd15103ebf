"""
The commands and Python examples of the README and the docs run as written, at a tiny budget, so that an example
cannot rot: every ``sb3-pgext-zoo`` / ``python -m sb3_pgext.zoo`` command and every Python block is run, in order,
in a folder of its own, unless :data:`SKIPPED` names it with the reason and the test that covers it instead.
Budgets are shrunk (``-n``, ``--eval-freq``, ``--n-trials``, ``.learn(N)``; a zoo ``train`` without ``-n`` gets one);
nothing else is changed.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
#: a command line or Python block holding one of these is not run here: why, and what tests it instead
SKIPPED = {
    "pip install": "set-up; CI runs the README's test command from a fresh clone (.ci/run)",
    "sphinx-build": "tests/test_docs.py builds the docs",
    "postgresql+psycopg": "needs a PostgreSQL server: tests/test_zoo.py::test_two_workers_share_one_postgresql_study",
    "optuna create-study": "part of the PostgreSQL recipe above",
    "load_from_hub": "downloads from the Hugging Face Hub: tests/test_zoo.py loads from a local hub cache",
    "hub_logs": "reads what load_from_hub downloaded: tests/test_zoo.py and tests/test_compat.py",
    "push_to_hub": "uploads to the Hub: tests/test_zoo.py pushes with the hub API replaced",
    "python -m sb3_pgext.suite": "trains a suite for hours: tests/test_suite.py runs tiny suites through the same code",
    "variance_decomposition(": "minutes of continuations: tests/test_variance_decomposition.py",
}
#: tiny budgets: (pattern, replacement)
SHRINK = [
    (re.compile(r"(?<=\s)-n \d+"), "-n 512"),
    (re.compile(r"--eval-freq \d+"), "--eval-freq 256"),
    (re.compile(r"--n-trials \d+"), "--n-trials 8"),
    (re.compile(r"\.learn\([\d_]+"), ".learn(512"),
]
COMMAND = re.compile(r"(sb3-pgext-zoo|python -m sb3_pgext\.(zoo|suite))\b")
#: a zoo train command up to the end of its line, its "&&" or its comment: one without -n trains the yml's budget, so
#: gets a tiny one
TRAIN = re.compile(r"(?:sb3-pgext-zoo|python -m sb3_pgext\.zoo) train\b[^&#\n]*?(?=\s*(?:&&|#|$))", flags=re.MULTILINE)
TINY_TRAIN = " -n 1024"


def blocks(page: Path) -> list[tuple[str, str]]:
    """The fenced code blocks of a page: (language, body)."""
    return re.findall(r"^```(\w*)\n(.*?)^```", page.read_text(), flags=re.DOTALL | re.MULTILINE)


def skip_reason(text: str) -> str | None:
    return next((reason for marker, reason in SKIPPED.items() if marker in text), None)


def shrink(text: str) -> str:
    for pattern, replacement in SHRINK:
        text = pattern.sub(replacement, text)
    return TRAIN.sub(lambda match: match.group(0) if " -n " in match.group(0) else match.group(0) + TINY_TRAIN, text)


def shell_script(body: str) -> str | None:
    """
    A bash block's runnable part: logical lines (continuations joined) that are skipped are commented out, the
    README's set-up and test commands reduced to their zoo commands; None when nothing is left to run.
    """
    lines, runnable = [], False
    for line in re.sub(r"\\\n\s*", " ", body).splitlines():
        command = COMMAND.search(line)
        if command and "pip install" in line:  # the README's one-liner: its zoo commands, after the set-up
            line = line[command.start() :]
        if skip_reason(line) is not None and not line.lstrip().startswith("#"):
            lines.append(f"# skipped: {line}")
            continue
        runnable = runnable or bool(command)
        lines.append(shrink(line))
    return "\n".join(lines) if runnable else None


def examples() -> list[tuple[str, str, str]]:
    """(id, "bash" or "python", script) of every runnable example, in page order."""
    found = []
    for page in PAGES:
        name = page.relative_to(ROOT).as_posix()
        for index, (language, body) in enumerate(blocks(page)):
            if language == "python" and skip_reason(body) is None:
                found.append((f"{name}#{index}", "python", shrink(body)))
            elif language in ("bash", "sh", ""):
                script = shell_script(body)
                if script is not None:
                    found.append((f"{name}#{index}", "bash", script))
    return found


EXAMPLES = examples()


def test_the_docs_examples_are_found():
    """The pages hold the examples this file runs (a change of fence or command form would silently run none)."""
    ids = {example_id.split("#")[0] for example_id, _, _ in EXAMPLES}
    assert {"README.md", "docs/getting_started.md", "docs/guide/zoo.md", "docs/guide/gradient_variance.md"} <= ids


@pytest.mark.parametrize("example_id, language, script", EXAMPLES, ids=[example[0] for example in EXAMPLES])
def test_doc_example_runs_as_written(tmp_path, example_id, language, script):
    # the console script of this interpreter's environment, and the copy of hyperparams/ppokl.yml the guide names
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "MPLBACKEND": "Agg",
                   "SDL_VIDEODRIVER": "dummy", "HF_HUB_OFFLINE": "1"}  # fmt: skip
    shutil.copy(ROOT / "hyperparams" / "ppokl.yml", tmp_path / "my_ppokl.yml")
    if language == "python":
        command = [sys.executable, "-c", "import torch; torch.set_num_threads(1)\n" + script]
    else:
        command = ["bash", "-e", "-o", "pipefail", "-c", script]
    finished = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=900)
    assert finished.returncode == 0, f"{example_id} failed:\n{script}\n--- output ---\n{(finished.stdout + finished.stderr)[-4000:]}"
