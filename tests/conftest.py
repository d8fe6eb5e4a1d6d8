"""Shared fixtures: where the real datasets are (read-only), decoded once per session."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# ``pytest -n auto`` (pytest-xdist; the README's test command): how many worker processes, and
# how many threads each. The largest process peaked at 2.1 GB (``/usr/bin/time -v`` over the
# whole suite at -n 2); 3 GiB each leaves room for the subprocesses some tests start.
WORKER_MEMORY = 3 * 2**30


def parallel_workers(cores: int, available_memory: int | None) -> int:
    """``-n auto``'s worker count: one per usable core, and no more than the memory holds."""
    fit = cores if available_memory is None else available_memory // WORKER_MEMORY
    return max(1, min(cores, fit))


def _available_memory() -> int | None:
    """MemAvailable from /proc/meminfo in bytes (None where there is no such file)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: no error where xdist is not installed
def pytest_xdist_auto_num_workers(config):
    from bench.executors import available_cores

    return parallel_workers(available_cores(), _available_memory())


def pytest_configure(config):
    """In an xdist worker: the cores shared out among the workers (``bench.executors.worker_threads``,
    which keeps a user's ``$OMP_NUM_THREADS``), for its torch and for the processes its tests start;
    N workers of 2 threads each on 2 cores spin against each other (at -n 2 so, 71% of the suite
    in 15 minutes; at one thread each, all of it in 9)."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        import torch

        from bench.executors import worker_threads

        threads = worker_threads(int(workers))
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)


def _every_eighth_sample(data, test_images=None, **dataset_changes):
    """``data`` with every 8th sample of its pool, its first ``test_images`` test images (all if
    None) and ``dataset_changes`` made to its dataset (e.g. ``augment=True``)."""
    import dataclasses

    dataset = data.dataset
    if test_images is not None:
        dataset_changes = {"x_test": dataset.x_test[:test_images], "y_test": dataset.y_test[:test_images],
                           **dataset_changes}
    every = slice(None, None, 8)
    return dataclasses.replace(data, dataset=dataclasses.replace(dataset, **dataset_changes),
                               train_index=data.train_index[every], train_y=data.train_y[every],
                               train_clean_y=data.train_clean_y[every], is_noisy=data.is_noisy[every])


@pytest.fixture
def every_eighth_sample():
    """The function that thins a run's data to every 8th pool sample (tests that build a Run)."""
    return _every_eighth_sample


@pytest.fixture
def small_pools(monkeypatch):
    """Every 8th sample of each run's pool and the first 500 test images (CurveNet's probe must see
    its whole pool every epoch, so tests shorten epochs this way instead of cutting them)."""
    import bench.execute

    real = bench.execute.load_data
    monkeypatch.setattr(bench.execute, "load_data",
                        lambda spec, data_dir=None: _every_eighth_sample(real(spec, data_dir), test_images=500))


def _field_changed(value, name: str, params):
    if name == "params":
        return params
    if name == "precision":
        return "bf16"
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, tuple):
        return value + (99,)
    return value + "x"


@pytest.fixture
def changed_fields():
    """``changed_fields(spec, params)``: for every ``RunSpec`` field, ``(name, spec with that field
    alone changed)``; ``params`` is the changed ``params`` value (a setting's other value)."""
    import dataclasses

    def each(spec, params):
        for f in dataclasses.fields(spec):
            yield f.name, spec.replace(**{f.name: _field_changed(getattr(spec, f.name), f.name, params)})
    return each


@pytest.fixture
def float64():
    """torch's default dtype float64 for the test (exactness checks to rounding), then back."""
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def shared_data_path() -> Path:
    """``$BENCH_SHARED_DATA``, else ``<repo>/../shared/data`` (see shared/data/README.md)."""
    return Path(os.environ.get("BENCH_SHARED_DATA") or REPO.parent / "shared" / "data")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_path()
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path} (set BENCH_SHARED_DATA)")
    return path


def _shared_file(shared_data: Path, relative: str) -> Path:
    path = shared_data / relative
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture(scope="session")
def cifar10_jpeg_file(shared_data) -> Path:
    """The JPEG-encoded CIFAR-10 (labels are exact; read them without decoding)."""
    return _shared_file(shared_data, "cifar10-jpeg/cifar10_jpeg.npz")


@pytest.fixture(scope="session")
def cifar100_labels_file(shared_data) -> Path:
    return _shared_file(shared_data, "cifar100-labels/cifar100_labels.npz")


@pytest.fixture(scope="session")
def cifar10_npz(cifar10_jpeg_file, tmp_path_factory) -> Path:
    """CIFAR-10 decoded from JPEG into a plain npz (x_train, y_train, ...), once per session."""
    tool = cifar10_jpeg_file.parents[2] / "tools" / "cifar10_jpeg_decode.py"
    if not tool.is_file():
        pytest.skip(f"{tool} not found")
    out = tmp_path_factory.mktemp("cifar10") / "cifar10_from_jpeg.npz"
    subprocess.run([sys.executable, str(tool), str(cifar10_jpeg_file), str(out)], check=True,
                   capture_output=True)
    return out


@pytest.fixture()
def figures(monkeypatch):
    """The figures bench.plots draws, kept (plt.close records them instead of closing)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kept = []
    monkeypatch.setattr(plt, "close", lambda fig=None: kept.append(fig))
    yield kept
    monkeypatch.undo()
    for fig in kept:
        plt.close(fig)


@pytest.fixture()
def suptitle():
    """``suptitle(fig)``: the figure's suptitle ("" if it has none). ``Figure.get_suptitle`` is
    matplotlib 3.8's; the package supports 3.7 (pyproject.toml), whose figures keep it here."""
    return lambda fig: "" if fig._suptitle is None else fig._suptitle.get_text()
