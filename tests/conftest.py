"""Shared test settings, strategies and fixtures.

Hypothesis runs under the "ci" profile by default: no deadline (the first call of a torch op can
be slow), a modest number of examples, and derandomised so that two runs test the same examples.
``HYPOTHESIS_PROFILE=dev`` explores more (randomised) examples locally;
``HYPOTHESIS_PROFILE=thorough`` (``make test-thorough``) runs ten times the examples of every
property test, randomised; ``make mutate`` runs the ``mutation`` profile (10 examples). Tests
that cap their examples (a costly solve per example) do so with ``examples(n)``, which follows
the profile.

Strategies build float64 problems ``[B, K]`` (B rows of contexts, K actions) with reference
policies that may put zero mass on some actions (actions outside the support of pi0), rewards
in a bounded range and ``eta`` drawn log-uniformly over [1e-6, 1e8].
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import Future, ThreadPoolExecutor

import matplotlib
import pytest
import torch
from hypothesis import settings
from hypothesis import strategies as st

# jsonschema (imported by nbformat, and by the CITATION.cff check) builds a Lark grammar at import
# when rfc3987-syntax is installed (a dependency of jupyter-events): about 2 s of CPU, for the
# "iri" and "iri-reference" formats only, which neither the CFF schema ("date", "uri") nor the
# notebook schemas use. Marking the module absent makes jsonschema skip those two checkers.
sys.modules.setdefault("rfc3987_syntax", None)
matplotlib.use("Agg")
# The tests use tiny tensors: one intra-op thread is faster than several fighting over 2 cores.
torch.set_num_threads(1)

settings.register_profile("ci", deadline=None, max_examples=60, derandomize=True, database=None)
settings.register_profile("dev", deadline=None, max_examples=500)
settings.register_profile("thorough", deadline=None, max_examples=600, database=None)
# make mutate: every mutant reruns the property tests that call its function, so they run few
# (derandomised) examples there.
settings.register_profile("mutation", deadline=None, max_examples=10, derandomize=True,
                          database=None)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)
#: How many times more examples the thorough profile runs than the ci profile.
THOROUGH_FACTOR = 10


def examples(count: int):
    """``@settings(max_examples=count)`` under the ci profile, ten times more when thorough, at
    most the mutation profile's number under make mutate."""
    if PROFILE == "mutation":
        count = min(count, settings().max_examples)
    return settings(max_examples=count * (THOROUGH_FACTOR if PROFILE == "thorough" else 1))

#: Machine epsilon of float64; the round-off tolerances of the tests are multiples of it.
EPS = torch.finfo(torch.float64).eps

ETA_MIN, ETA_MAX = 1e-6, 1e8


def log_uniform(low: float, high: float) -> st.SearchStrategy[float]:
    """Floats spread evenly in log10 between ``low`` and ``high`` (both > 0)."""
    import math

    return st.floats(math.log10(low), math.log10(high)).map(lambda t: 10.0**t)


def etas(low: float = ETA_MIN, high: float = ETA_MAX) -> st.SearchStrategy[float]:
    """The KL coefficient, log-uniform in [low, high] (default the full range 1e-6 .. 1e8)."""
    return log_uniform(low, high)


@st.composite
def distributions(draw, num_actions: int, support: list[bool] | None = None,
                  allow_zeros: bool = True, min_prob: float = 1e-12) -> list[float]:
    """One probability vector over ``num_actions`` actions, as a list of floats.

    Positive entries are log-uniform weights in [min_prob, 1] before normalisation (so ratios up
    to 1/min_prob occur); with ``allow_zeros`` some entries are exactly 0. Entries where
    ``support`` is False are always 0; at least one entry inside the support is positive.
    """
    support = support if support is not None else [True] * num_actions
    positive = log_uniform(min_prob, 1.0)
    entry = st.one_of(st.just(0.0), positive) if allow_zeros else positive
    weights = [draw(entry) if inside else 0.0 for inside in support]
    if not any(w > 0 for w in weights):
        allowed = [i for i, inside in enumerate(support) if inside]
        weights[draw(st.sampled_from(allowed))] = draw(positive)
    total = sum(weights)
    return [w / total for w in weights]


@st.composite
def ref_probs_batches(draw, max_actions: int = 8, max_rows: int = 3, allow_zeros: bool = True,
                      min_prob: float = 1e-12) -> torch.Tensor:
    """Reference policies ``[B, K]`` (float64), possibly with zeros (actions outside pi0)."""
    num_actions = draw(st.integers(1, max_actions))
    num_rows = draw(st.integers(1, max_rows))
    rows = [draw(distributions(num_actions, allow_zeros=allow_zeros, min_prob=min_prob))
            for _ in range(num_rows)]
    return torch.tensor(rows, dtype=torch.float64)


def rewards_like(shape: tuple[int, ...], scale: float = 10.0) -> st.SearchStrategy[torch.Tensor]:
    """Rewards of ``shape`` with entries in [-scale, scale] (ties and zeros are common)."""
    numel = 1
    for size in shape:
        numel *= size
    entry = st.floats(-scale, scale, allow_nan=False, allow_infinity=False)
    return st.lists(entry, min_size=numel, max_size=numel).map(
        lambda values: torch.tensor(values, dtype=torch.float64).reshape(shape)
    )


@st.composite
def gibbs_problems(draw, eta_range: tuple[float, float] = (ETA_MIN, ETA_MAX),
                   reward_scale: float = 10.0, max_actions: int = 8, max_rows: int = 3,
                   allow_zeros: bool = True, min_prob: float = 1e-12):
    """``(ref_probs [B, K], rewards [B, K], eta)`` for the Gibbs-policy properties."""
    ref_probs = draw(ref_probs_batches(max_actions, max_rows, allow_zeros, min_prob))
    rewards = draw(rewards_like(tuple(ref_probs.shape), reward_scale))
    eta = draw(etas(*eta_range))
    return ref_probs, rewards, eta


@st.composite
def policies_on_support(draw, ref_probs: torch.Tensor, allow_zeros: bool = True,
                        min_prob: float = 1e-12) -> torch.Tensor:
    """A policy ``[B, K]`` whose support lies inside that of ``ref_probs`` (finite KL)."""
    rows = [draw(distributions(ref_probs.shape[-1], support=(row > 0).tolist(),
                               allow_zeros=allow_zeros, min_prob=min_prob))
            for row in ref_probs]
    return torch.tensor(rows, dtype=torch.float64)


@pytest.fixture(autouse=True)
def run_folder(tmp_path, monkeypatch):
    """Point notebook runs at ``tmp_path / "run"`` so no test writes into the repository.

    Autouse: every test gets its own run folder and no ``$GSFH_NOTEBOOK`` from the environment;
    ``monkeypatch`` restores both even when the code under test (the runner) sets them itself.
    """
    folder = tmp_path / "run"
    monkeypatch.setenv("GSFH_RUN_DIR", str(folder))
    monkeypatch.delenv("GSFH_NOTEBOOK", raising=False)
    return folder


class SmallRuns:
    """Every notebook executed at most once per test session, at the small profile, into one
    session folder: the notebook tests check these runs and the book tests render them."""

    def __init__(self, folder):
        self.folder = folder
        self._runs = {}

    def __call__(self, notebook):
        from gsfh_utils.lab.runner import run_notebook

        if notebook.stem not in self._runs:
            self._runs[notebook.stem] = run_notebook(notebook, {"profile": "small"}, self.folder)
        return self._runs[notebook.stem]


@pytest.fixture(scope="session")
def small_runs(tmp_path_factory) -> SmallRuns:
    return SmallRuns(tmp_path_factory.mktemp("small-runs"))


# --- work started right after collection ------------------------------------------------------
#
# The test process is single-threaded, so on two cores one core idles while it runs; a test that
# mostly waits for other processes (a script in a fresh interpreter, a pool of spawned workers)
# wastes it. Such a test asks for a ``prestart`` fixture: its function runs in the main thread
# right after collection, when a selected test uses it, and starts the slow work in the
# background (a ``subprocess.Popen``, or ``background(...)``); the test then waits for it. What
# the test checks is unchanged, only when the work starts.

PRESTART = {}
_handles: dict[str, object] = {}
_executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="prestart")


def background(function, *args, **kwargs) -> Future:
    """``function(*args, **kwargs)`` in a background thread (for a prestart function whose work
    waits on other processes); the test reads the ``Future``'s result."""
    return _executor.submit(function, *args, **kwargs)


def prestart(function):
    """Register ``function`` (no arguments; returns a handle on work it started) as a session
    fixture of the same name whose value is that handle, started right after collection."""
    PRESTART[function.__name__] = function

    @pytest.fixture(scope="session", name=function.__name__)
    def fixture():
        return _start(function.__name__)

    return fixture


def _start(name):
    if name not in _handles:
        _handles[name] = PRESTART[name]()
    return _handles[name]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """A test that waits for processes started after collection (a ``prestart`` fixture, also
    through another fixture) is an integration test: ``-m "not integration"`` leaves it out."""
    for item in items:
        if PRESTART.keys() & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


def pytest_collection_finish(session):
    if session.config.option.collectonly:
        return
    for name in sorted({name for item in session.items
                        for name in getattr(item, "fixturenames", ()) if name in PRESTART}):
        _start(name)


def pytest_sessionfinish(session):
    """Nothing started outlives the session: an unused process is killed, threads are joined."""
    for handle in _handles.values():
        if hasattr(handle, "poll") and handle.poll() is None:
            handle.kill()
            handle.wait()
    _executor.shutdown(wait=True, cancel_futures=True)
