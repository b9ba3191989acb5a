"""Test configuration shared by every test module.

* Four fake CPU devices are configured *before* JAX initialises its backend, so that a plain ``pytest`` exercises the
  multi-device code paths (``jax.pmap``, ``jax.sharding.Mesh``) on a laptop or a CI runner.
* Tests marked ``slow`` are skipped unless ``pytest --runslow`` is given.
* Fixtures: ``x64`` (float64 inside the test), ``devices4`` (four devices, skips if fewer), ``key`` (a PRNG key).
"""

import os

NUM_FAKE_DEVICES = 4
_flag = f"--xla_force_host_platform_device_count={NUM_FAKE_DEVICES}"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

try:  # must happen before the backend is initialised; harmless if the XLA flag already did it.
    jax.config.update("jax_num_cpu_devices", NUM_FAKE_DEVICES)
except Exception:  # pragma: no cover - backend already initialised by a plugin
    pass


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: run with `pytest --runslow`")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture
def x64():
    """Run the test body with float64 enabled; restores the previous setting afterwards."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def devices4():
    """The first four devices (fake CPU devices under this conftest)."""
    devs = jax.devices()
    if len(devs) < NUM_FAKE_DEVICES:
        pytest.skip(f"needs {NUM_FAKE_DEVICES} devices, have {len(devs)}")
    return devs[:NUM_FAKE_DEVICES]


@pytest.fixture
def key():
    return jax.random.key(0)
