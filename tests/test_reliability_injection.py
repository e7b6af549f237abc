"""No injection: user values reach programs verbatim, never a shell's parser; YAML is safe.

* The package never hands a string to a shell (no ``shell=True``, ``os.system``,
  ``os.popen``...), never evaluates text (``eval``/``exec``) and reads YAML with
  ``yaml.safe_load`` only; the sbatch scripts forward their arguments as ``"$@"``. Checked on
  the syntax tree of every module, so comments and strings do not count.
* ReFrame writes the ``mlbench train`` command into a job script that a shell runs. Values
  from ``-S`` (``data_dir``, ``config``, ``overrides``) and from the site config are quoted
  there: the job script of a dry run, run by bash with the launcher replaced by a function
  that prints its arguments, passes each hostile value as one argument and runs nothing
  planted in it. The slow test runs such a test for real, on a data folder whose name holds
  spaces, quotes and a command substitution.
"""

from __future__ import annotations

import ast
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.reframe_helpers import TESTS_DIR, find_case, job_script, reframe, run_report

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = ("benchmarks", "perflogs_parsers", "reframe_tests", "site_config", "bench")
SHELL_CALLS = {("os", "system"), ("os", "popen"), ("os", "execlp"), ("subprocess", "getoutput"),
               ("subprocess", "getstatusoutput"), ("pty", "spawn")}
SAFE_YAML = {"safe_load", "safe_load_all", "safe_dump", "safe_dump_all", "dump", "YAMLError"}
LOCAL_SMOKE = "^resnet50_smoke%num_nodes=1%device=cpu$"
GPU_FULL = "^resnet50_full%num_nodes=2%device=gpu$"


def package_modules() -> list[Path]:
    return sorted(path for folder in PACKAGE_DIRS for path in (REPO / folder).rglob("*.py"))


def unsafe_calls(tree: ast.AST) -> list[str]:
    """What in this syntax tree could run a shell or code built from text."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                    node.value.id == "yaml" and node.attr not in SAFE_YAML:
                found.append(f"line {node.lineno}: yaml.{node.attr}")
            continue
        function = node.func
        if isinstance(function, ast.Name) and function.id in ("eval", "exec"):
            found.append(f"line {node.lineno}: {function.id}()")
        if isinstance(function, ast.Attribute) and isinstance(function.value, ast.Name) and \
                (function.value.id, function.attr) in SHELL_CALLS:
            found.append(f"line {node.lineno}: {function.value.id}.{function.attr}()")
        for keyword in node.keywords:
            is_false = isinstance(keyword.value, ast.Constant) and not keyword.value.value
            if keyword.arg == "shell" and not is_false:
                found.append(f"line {node.lineno}: shell={ast.unparse(keyword.value)}")
    return found


def test_unsafe_call_finder_finds_what_it_looks_for() -> None:
    planted = ("import os, subprocess, yaml\nsubprocess.run(cmd, shell=True)\n"
               "subprocess.Popen(cmd, shell=flag)\nos.system(cmd)\nyaml.load(text)\n"
               "yaml.unsafe_load(text)\neval(text)\nsubprocess.run(cmd, shell=False)\n"
               "yaml.safe_load(text)\n")
    assert sorted(unsafe_calls(ast.parse(planted))) == [
        "line 2: shell=True", "line 3: shell=flag", "line 4: os.system()", "line 5: yaml.load",
        "line 6: yaml.unsafe_load", "line 7: eval()"]


def test_package_never_runs_a_shell_or_unsafe_yaml() -> None:
    modules = package_modules()
    assert len(modules) > 30, modules
    problems = {str(path.relative_to(REPO)): hits for path in modules
                if (hits := unsafe_calls(ast.parse(path.read_text(), str(path))))}
    assert problems == {}


def test_sbatch_scripts_forward_arguments_quoted() -> None:
    scripts = sorted((REPO / "benchmarks").glob("*/run.slurm"))
    assert scripts
    for script in scripts:
        for number, line in enumerate(script.read_text().splitlines(), 1):
            code = line.split("#", 1)[0].replace('"$@"', "")
            assert not re.search(r"\$\{?[@*]", code), f"{script}:{number}: {line}"


def hostile_values(folder: Path) -> dict[str, str]:
    """Values for -S that a shell would split, expand or run if they reached it unquoted."""
    return {
        "data_dir": f"{folder}/data dir 'x' \"y\" $(touch {folder}/pwned-data) *;&|<>",
        "config": f"smoke; touch {folder}/pwned-config",
        "overrides": f"training.log_file={folder}/log `touch {folder}/pwned-log` $HOME.txt",
    }


def arguments_bash_passes(command_line: str, program: str, cwd: Path) -> list[str]:
    """The arguments bash gives ``program`` when it runs ``command_line`` (``program``
    replaced by a function that prints them)."""
    script = f'{program}() {{ printf "%s\\0" "$@"; }}\n{command_line}\n'
    done = subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    return done.stdout.decode().split("\0")[:-1]


def train_arguments(argv: list[str]) -> list[str]:
    return argv[argv.index("mlbench") + 1:]


def dry_run(workdir: Path, values: dict[str, str], *args: str) -> list[dict]:
    settings = [arg for name, value in values.items() for arg in ("-S", f"{name}={value}")]
    result = reframe([*args, *settings, "--dry-run"], workdir, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return run_report(workdir)


def expected_train_arguments(values: dict[str, str], device: str) -> list[str]:
    return ["train", "resnet50", "--data-dir", values["data_dir"], "--device", device,
            "--config", values["config"], "--set", values["overrides"]]


def test_local_job_script_passes_hostile_values_verbatim(tmp_path: Path) -> None:
    values = hostile_values(tmp_path)
    cases = dry_run(tmp_path, values, "-c", str(TESTS_DIR / "resnet50.py"), "-n", LOCAL_SMOKE)
    command_line = job_script(find_case(cases, "resnet50_smoke")).splitlines()[-1]
    assert command_line.startswith("mlbench train resnet50 "), command_line

    argv = arguments_bash_passes(command_line, "mlbench", tmp_path)
    assert argv == expected_train_arguments(values, "cpu")
    assert not list(tmp_path.glob("pwned-*"))


@pytest.mark.parametrize("launcher", ["srun", "torchrun"])
def test_cluster_job_scripts_pass_hostile_values_verbatim(tmp_path: Path, launcher: str) -> None:
    values = hostile_values(tmp_path)
    cases = dry_run(tmp_path, values, "--system", "example-gpu", "-c",
                    str(TESTS_DIR / "resnet50.py"), "-n", GPU_FULL, "-S", f"launcher={launcher}")
    script = job_script(find_case(cases, "resnet50_full"))
    command_line = next(line for line in script.splitlines() if line.startswith("srun "))

    argv = arguments_bash_passes(command_line, "srun", tmp_path)
    assert train_arguments(argv) == expected_train_arguments(values, "cuda")
    assert not list(tmp_path.glob("pwned-*"))


@pytest.mark.slow
def test_reframe_runs_on_a_data_folder_named_like_an_attack(resnet_data: Path,
                                                            tmp_path: Path) -> None:
    # Relative names (a path would add folders): run, they would land in the stage folder.
    weird = tmp_path / "data dir 'x' $(touch pwned-data)"
    weird.symlink_to(resnet_data, target_is_directory=True)
    log = tmp_path / "log `touch pwned-log`.txt"
    result = reframe(["-c", str(TESTS_DIR / "resnet50.py"), "-n", LOCAL_SMOKE,
                      "-S", f"data_dir={weird}", "-S", "epochs=1", "-S", "target=0",
                      "-S", f"overrides=training.log_file={log}", "-r"], tmp_path, timeout=900)

    case = find_case(run_report(tmp_path), "resnet50_smoke")
    assert case["result"] == "pass", case["fail_reason"] or result.stdout[-3000:]
    assert not list(tmp_path.rglob("pwned-*"))
    assert '"key": "run_stop"' in log.read_text()
    script = (Path(case["outputdir"]) / "rfm_job.sh").read_text()  # passed: stage removed
    assert f"--data-dir {shlex.quote(str(weird))} " in script
