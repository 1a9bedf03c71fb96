"""The two set-up paths (Makefile + pip, conda) must install the same thing."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_environment_yml_takes_its_packages_from_pyproject():
    text = (ROOT / "environment.yml").read_text()
    pip_lines = re.findall(r"^\s+- (.+)$", text.split("- pip:")[1], flags=re.M)
    # pip installs the project itself with its dev extra and nothing else: one list of packages
    assert [l for l in pip_lines if not l.startswith("--")] == ["-e .[dev]"]
    conda_deps = re.findall(r"^  - (\S+)$", text.split("dependencies:")[1].split("- pip:")[0], flags=re.M)
    assert sorted(d.split("=")[0] for d in conda_deps) == ["pip", "python"]


def test_torch_requirement_admits_the_cpu_build_and_no_unbounded_release():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (torch_req,) = [d for d in deps if d.startswith("torch")]
    assert "<" in torch_req, "an unbounded torch requirement can pull a multi-GB CUDA build"
    makefile = (ROOT / "Makefile").read_text()
    pinned = re.search(r"TORCH_SPEC \?= torch==([\d.]+)", makefile).group(1)
    low, high = re.search(r">=([\d.]+),<=([\d.]+)", torch_req).groups()
    version = lambda v: tuple(int(x) for x in v.split("."))
    assert version(low) <= version(pinned) <= version(high)


def test_required_dependencies_are_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=\[ ]", d)[0].lower() for d in project["dependencies"] + project["optional-dependencies"]["dev"]}
    for required in ["torch", "gymnasium", "mujoco", "matplotlib", "jupyterlab", "ipywidgets", "papermill", "nbval"]:
        assert required in names, required


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make lab" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
