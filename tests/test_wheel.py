"""jaxsciml used as a dependency: build the wheel, install it into a fresh virtual environment and use it from outside
the source tree."""

import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent(
    """
    import os, sys
    import jaxsciml
    here = os.path.dirname(jaxsciml.__file__)
    assert here.startswith(sys.prefix), (here, sys.prefix)
    assert os.path.exists(os.path.join(here, "py.typed"))
    from jaxsciml import ode, pde, optim, train
    for sub in (ode, pde, optim, train):
        for name in sub.__all__:
            getattr(sub, name)
    sys.path.insert(0, os.environ["JAXSCIML_SMOKE_DIR"])
    import wheel_smoke
    wheel_smoke.run()
    print("OK", jaxsciml.__version__)
    """
)


def test_wheel_installs_and_runs_outside_tree(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)],
        check=True,
    )
    (wheel,) = dist.glob("jaxsciml-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
    # Dependencies come from the test environment (a path entry, so its editable jaxsciml is *not* visible).
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["JAXSCIML_SMOKE_DIR"] = str(Path(__file__).resolve().parent / "smoke")
    env["JAX_PLATFORMS"] = "cpu"
    res = subprocess.run([str(py), "-c", SCRIPT], cwd=work, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "OK" in res.stdout
