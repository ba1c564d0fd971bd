"""The report's figures say nothing on the console and take any input name as plain text (issue 25
item 12: a matplotlib warning on the console)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest

from virnucpro.report.data import InputStats
from virnucpro.report.figures import input_reads_figure, input_scores_figure

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_matplotlib_config_folder_not_writable_prints_nothing(tmp_path):
    """A compute node's read-only home: matplotlib logged two WARNING lines at import."""
    env = {**os.environ, "MPLCONFIGDIR": str(tmp_path / "file" / "not-a-folder")}
    (tmp_path / "file").write_text("a file, so the folder cannot be made\n")
    done = subprocess.run([sys.executable, "-c", "import virnucpro.report.figures"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr


@pytest.mark.parametrize("name", ["a$\\foo$b", "$x^2$ reads", "样本 中文", "tab\there"])
def test_input_names_are_drawn_as_plain_text_without_warnings(name):
    stats = InputStats(index=0, name=name, path=f"{name}.fa")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a missing glyph warned once per character; '$\\foo$' raised
        for draw in (input_scores_figure(stats, None), input_reads_figure(stats)):
            assert draw.startswith(PNG_MAGIC)
