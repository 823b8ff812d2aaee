"""A node's lifecycle settings file (lifecycle.toml in its home): read, checked, refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.lifecycle.settings import SETTINGS_FILE, load_settings
from protocol.errors import UserError


def test_defaults_and_a_file_that_overrides_some(tmp_path: Path) -> None:
    assert load_settings(tmp_path).job_nice == 10
    (tmp_path / SETTINGS_FILE).write_text("job_nice = 0\nmax_queued = 1\n")
    settings = load_settings(tmp_path)
    assert (settings.job_nice, settings.max_queued, settings.max_concurrent) == (0, 1, 2)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("job_nice = -1\n", "job_nice must be a whole number from 0 to 19, not -1"),
        ("job_nice = 20\n", "not 20"),
        ('job_nice = "low"\n', "not 'low'"),
        ("job_nice = true\n", "not True"),
        ("no_such_thing = 1\n", "unknown setting(s): no_such_thing"),
        ("job_nice = \n", "lifecycle.toml"),
    ],
)
def test_a_bad_settings_file_is_refused_in_one_line(tmp_path: Path, text: str, says: str) -> None:
    (tmp_path / SETTINGS_FILE).write_text(text)
    with pytest.raises(UserError) as caught:
        load_settings(tmp_path)
    message = str(caught.value)
    assert says in message
    assert "\n" not in message
