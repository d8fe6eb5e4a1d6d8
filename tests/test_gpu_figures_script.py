"""scripts/gpu_figures.sh, the GPU session's one prepared script, checked without a GPU: every
command it would run, recorded by a stand-in interpreter, is one the suite's parser and test
files accept (a renamed option or test file would otherwise cost a lent GPU's minutes)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import timing
from bench.cli import make_parser

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_figures.sh"


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash, timeout")
def test_every_command_of_the_gpu_script_parses(tmp_path):
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    log = tmp_path / "calls.jsonl"
    fake = tmp_path / "python"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\n"
                    f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
    fake.chmod(0o755)
    env = {**os.environ, "PYTHON": str(fake), "OUT": ""}
    done = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], env=env, capture_output=True, text=True,
                          timeout=120)
    out = tmp_path / "lent_out"  # the lent machine's $OUT: the archive of what is done so far comes back
    out.mkdir()
    first = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "first"), "env", "targets"],
                           env={**env, "OUT": str(out)}, capture_output=True, text=True, timeout=60)
    assert [f.name for f in out.iterdir()] == ["gpu_figures.tgz"]  # renamed whole, no .part left
    listed = subprocess.run(["tar", "tzf", str(out / "gpu_figures.tgz")], capture_output=True, text=True).stdout
    assert "first/parts.log" in listed.split()
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    bench_calls = [c[2:] for c in calls if c[:2] == ["-m", "bench"]]
    pytest_calls = [c[2:] for c in calls if c[:2] == ["-m", "pytest"]]
    parts = {line.split(":")[0].removeprefix("== ") for line in done.stdout.splitlines() if line.startswith("== ")}
    first_parts = [line.split(":")[0].removeprefix("== ") for line in first.stdout.splitlines()
                   if line.startswith("== ")]
    assert "targets" not in parts and set(first_parts) == {"env", "targets"} and len(first_parts) == 8, first.stdout
    assert {"timing", "tuning", "compile", "compilerun", "deterministic", "pack", "packfused", "fuserun", "train",
            "suite", "benchmarks"} <= parts, done.stdout
    assert len(bench_calls) >= 25 and pytest_calls
    for argv in bench_calls:
        args = make_parser().parse_args(argv)  # raises BenchError on an unknown option or value
        if argv[0] == "timing":  # the step names are checked when timing runs: here, before
            assert set(args.steps.split(",")) <= set(timing.STEPS + timing.EXTRA_STEPS), argv
    for argv in pytest_calls:  # the test files and folders named (the suite part: all, less one folder)
        paths = [a.split("::")[0].removeprefix("--ignore=") for a in argv if a.removeprefix("--ignore=").startswith(
            "tests/")]
        assert paths and all((ROOT / p).exists() for p in paths), argv
