"""The versions the package says it supports are the versions it is tested on: tox's ``floors``
environment pins, for Python and for every dependency with a lower bound in pyproject.toml, a
release of that bound's own series (``numpy>=1.24``: a 1.24.x), so raising a bound without
testing it, or testing a release the bound does not allow, fails here."""

import configparser
import importlib.util
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]


def _pyproject():
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _floors_env():
    tox = configparser.ConfigParser()
    tox.read(REPO / "tox.ini")
    return tox["testenv:floors"]


def _lower_bound(requirement: Requirement) -> Version | None:
    bounds = [Version(s.version) for s in requirement.specifier if s.operator in (">=", "==", "~=")]
    return min(bounds) if bounds else None


def test_the_floors_environment_pins_the_lowest_series_of_every_bounded_dependency():
    project = _pyproject()
    requirements = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]
    pins = {}
    for line in _floors_env()["deps"].split("\n"):
        if line.strip():
            pin = Requirement(line.strip())
            pins[pin.name] = Version(next(iter(pin.specifier)).version)
    bounded = {r.name: r for r in requirements if _lower_bound(r) is not None}
    assert sorted(pins) == sorted(bounded), "every pin is a bounded dependency and every bound is pinned"
    for name, requirement in bounded.items():
        bound, pin = _lower_bound(requirement), pins[name]
        assert requirement.specifier.contains(pin, prereleases=False), f"{name} {pin} outside {requirement.specifier}"
        assert pin.release[:len(bound.release)] == bound.release, f"{name} {pin} is not of the series {bound}"


def test_the_floors_environment_runs_the_oldest_python_the_package_allows():
    floor = Version(_pyproject()["requires-python"].removeprefix(">="))
    assert _floors_env()["basepython"] == f"python{floor.major}.{floor.minor}"


def test_pytest_n_auto_runs_a_worker_per_core_as_far_as_the_memory_goes():
    # by its path: ``import conftest`` may find tests/benchmarks/conftest.py first
    spec = importlib.util.spec_from_file_location("tests_conftest", REPO / "tests" / "conftest.py")
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    parallel_workers, WORKER_MEMORY = conftest.parallel_workers, conftest.WORKER_MEMORY
    assert parallel_workers(2, 24 * 2**30) == 2  # this project's CI: 2 cores, 24 GiB
    assert parallel_workers(64, 24 * 2**30) == 24 * 2**30 // WORKER_MEMORY  # many cores, little memory
    assert parallel_workers(16, None) == 16  # no /proc/meminfo: the cores alone
    assert parallel_workers(4, WORKER_MEMORY - 1) == 1  # always at least one worker


def test_ci_runs_exactly_the_readmes_test_command():
    readme = (REPO / "README.md").read_text()
    block = readme.split("Install and run the tests", 1)[1].split("```bash\n", 1)[1].split("\n```", 1)[0]
    script = (REPO / ".ci" / "run").read_text().splitlines()
    ci = [line for line in script if line and not line.startswith(("#", "set ", "cd "))]
    assert ci == [block.strip()]
