"""recipes/: each published recipe passes the params schema, its page lists every value it sets, and
the command tools.recipe prints, run by DVC, leaves exactly the recipe in params.yaml."""
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tools import recipe
from training import params

RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
PAGES = {"stpg": "stpg.md", "cpcl": "cpcl.md", "css": "css.md", "lpl": "lpl.md"}


def test_every_seed_method_has_a_recipe():
    assert {path.name.split("_")[0] for path in RECIPES} == set(PAGES)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_is_valid_and_its_page_lists_every_value(path):
    overlay = recipe.load(path)
    method = path.name.split("_")[0]
    assert overlay["train"]["method"] == method
    recipe.command(overlay, "/datasets/x")  # raises on an unknown key or a wrong type
    page = (ROOT / "docs/methods" / PAGES[method]).read_text()
    table = page[page.index("## The published recipe"):]
    missing = [key for key, _ in recipe.settings(overlay) if key != "train.method" and f"`{key}`" not in table]
    assert not missing, f"{PAGES[method]} lists no line for {missing}"


def test_unknown_key_is_refused_naming_it(tmp_path):
    with pytest.raises(params.ParamsError, match="train.lrr"):
        recipe.command({"train": {"lrr": 0.1}}, "/datasets/x")


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_dvc_exp_run_applies_the_printed_command(tmp_path, path):
    """The printed line run by DVC in a throw-away repo (one stage reading every section) leaves
    params.yaml holding the recipe laid over the project's params, data.root included."""
    shutil.copy(params.PROJECT_PARAMS, tmp_path / "params.yaml")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"read": {
        "cmd": "cp params.yaml seen.yaml", "params": sorted(yaml.safe_load(params.PROJECT_PARAMS.read_text())),
        "outs": ["seen.yaml"]}}}))
    bin_dir = Path(sys.executable).parent
    run = lambda *args: subprocess.run(args, cwd=tmp_path, check=True, capture_output=True, text=True,  # noqa: E731
                                       env={"PATH": f"{bin_dir}:/usr/bin:/bin", "DVC_NO_ANALYTICS": "1", "HOME": str(tmp_path)})
    run("git", "init", "-q")
    run("dvc", "init", "-q")
    run("git", "add", "-A")
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "params")
    overlay = recipe.load(path)
    line = shlex.split(recipe.command(overlay, "/datasets/x"))
    assert line[:3] == ["dvc", "exp", "run"] and line[-1] == recipe.TARGET
    run(*line[:-1], "read")
    expected = tmp_path / "expected.yaml"
    expected.write_text(yaml.safe_dump(params.merged(yaml.safe_load(params.PROJECT_PARAMS.read_text()),
                                                     params.merged(overlay, {"data": {"root": "/datasets/x"}}))))
    # compared as the stages read them: DVC writes 4e-05 where PyYAML writes 4.0e-05
    for section in yaml.safe_load(expected.read_text()):
        assert params.load(section, tmp_path / "params.yaml") == params.load(section, expected), section
