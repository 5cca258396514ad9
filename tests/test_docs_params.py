"""The parameter tables of docs/methods/ state the defaults params.yaml holds."""
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def documented_defaults(page: Path) -> tuple[str, dict]:
    """(section, {key: default as written}) from the page's `## Parameters (`train.x`)` table."""
    text = page.read_text()
    section = re.search(r"^## Parameters \(`([\w.]+)`\)\n", text, re.M)
    table = text[section.end():].split("\n## ")[0]
    defaults = {}
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not cells[0].startswith("`"):
            continue
        keys = [key.strip("` ") for key in cells[0].split(",")]
        values = [cells[1]] if len(keys) == 1 else [value.strip() for value in cells[1].split(",")]
        defaults.update(zip(keys, values))
    return section.group(1), defaults


def as_value(text: str):
    value = yaml.safe_load(text.strip("`"))
    try:
        return float(value) if isinstance(value, str) else value  # 1e-5: YAML 1.1 reads it as text
    except ValueError:
        return value


@pytest.mark.parametrize("page", ["cpcl.md", "css.md", "lpl.md"])
def test_method_page_defaults_match_params(page):
    section, documented = documented_defaults(ROOT / "docs/methods" / page)
    actual = yaml.safe_load((ROOT / "params.yaml").read_text())
    for part in section.split("."):
        actual = actual[part]
    assert documented and set(documented) == set(actual), f"{page} documents {sorted(documented)}"
    for key, text in documented.items():
        assert as_value(text) == actual[key], f"{page}: {key} is documented as {text}, params.yaml has {actual[key]}"
