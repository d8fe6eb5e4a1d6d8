"""After a benchmark run, the ratios measured with every step in turns (test_step_benchmarks.py's
``test_ratios_with_the_steps_in_turns``), printed under pytest-benchmark's tables."""

import pytest

_RATIOS: list[tuple[str, dict]] = []


@pytest.fixture
def record_ratios():
    """``record_ratios(title, rows)``: a block of ``{label: text}`` lines for the terminal summary."""
    return lambda title, rows: _RATIOS.append((title, rows))


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's tables
def pytest_terminal_summary(terminalreporter):
    for title, rows in _RATIOS:
        terminalreporter.write_sep("-", title)
        width = max(map(len, rows))
        for label, text in rows.items():
            terminalreporter.write_line(f"{label:<{width}}  {text}")
