"""poisongen.parallel: the one place joblib Parallel runs are made."""

import re
from pathlib import Path

import pytest

import poisongen
from poisongen.errors import ConfigError
from poisongen.parallel import delayed, parallel


def square(x):
    return x * x


@pytest.mark.parametrize("jobs", [1, 2])
def test_results_in_task_order_whatever_the_jobs(jobs):
    assert parallel(jobs)(delayed(square)(i) for i in range(7)) == [i * i for i in range(7)]
    assert list(parallel(jobs, return_as="generator")(delayed(square)(i) for i in range(3))) == [0, 1, 4]


def test_backend_choice():
    assert parallel(1)._backend.__class__.__name__ == "SequentialBackend"
    assert "Loky" in parallel(2)._backend.__class__.__name__
    with pytest.raises(ConfigError, match="unknown parallel backend 'threads'; valid are {loky}"):
        parallel(2, backend="threads")


def test_no_other_module_makes_a_parallel_run():
    root = Path(poisongen.__file__).parent
    offenders = [p.relative_to(root).as_posix() for p in root.rglob("*.py")
                 if p.name != "parallel.py" and re.search(r"\bParallel\(|from joblib|import joblib", p.read_text())]
    assert offenders == []
