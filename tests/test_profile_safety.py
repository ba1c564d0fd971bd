"""Hostile SLURM profiles and flags (issue 25 items 6 and 10): YAML aliases and oversized profiles
refused before they expand, and nothing that could end a `#SBATCH` line (a newline before a
pattern's `$`, an option name holding one) reaches the script. One line naming the file or flag."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from virnucpro.errors import InputError
from virnucpro.orchestration import slurm
from virnucpro.orchestration.config import ModelSpec, RunConfig
from virnucpro.orchestration.slurm.profile import MAX_PROFILE_BYTES, OWNED_SBATCH_OPTIONS
from virnucpro.paths import STAGES, Workdir


def refusal(profile: str | None, flags: dict | None = None) -> str:
    with pytest.raises(InputError) as error:
        slurm.resolve_options(profile, flags or {"partition": "gpu"})
    text = str(error.value)
    assert "\n" not in text, text
    return text


def scripts(options, tmp_path: Path) -> dict[str, str]:
    config = RunConfig(inputs_list="x", inputs=["a.fa"], input_names=["a"], chunk_length=500, shards=2,
                       models=ModelSpec("esm", "dnabert", "cls"))
    jobs, _ = slurm.plan_jobs(config, {}, options.gpus_per_task)
    workdir = Workdir(tmp_path / "w")
    return {job.stage: slurm.render_script(workdir, job, options, {s: slurm.placeholder(s) for s in STAGES}) for job in jobs}


BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8)) + "partition: gpu\nsbatch: {comment: *i}\n"


def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path):
    profile = tmp_path / "bomb.yaml"
    profile.write_text(BOMB)  # 10^9 strings once expanded (3.8 GB, then MemoryError)
    text = refusal(str(profile))
    assert text.startswith(f"{profile}: line 1: YAML anchors and aliases") and "write each value out" in text


def test_even_a_harmless_alias_is_refused(tmp_path):
    profile = tmp_path / "site.yaml"
    profile.write_text("partition: &p gpu\ncpu_partition: *p\n")
    assert refusal(str(profile)).startswith(f"{profile}: line 1: YAML anchors and aliases")


def test_a_profile_over_the_size_cap_is_refused_unread(tmp_path):
    profile = tmp_path / "big.yaml"
    profile.write_text("partition: gpu\n" + "# padding\n" * (MAX_PROFILE_BYTES // 10))
    assert refusal(str(profile)) == (f"{profile}: a SLURM profile is at most 64 KiB (a few lines of settings); "
                                     "this one is larger: give the right file")


def test_deep_nesting_and_non_utf8_are_one_line_refusals(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("partition: gpu\nsbatch: " + "[" * 20_000 + "]" * 20_000 + "\n")  # RecursionError before
    assert refusal(str(deep)).startswith(f"{deep}: line 2: nested deeper than 8 levels")
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"partition: gpu\naccount: caf\xe9\n")  # UnicodeDecodeError before
    assert refusal(str(latin)).startswith(f"{latin}: cannot read the SLURM profile ('utf-8' codec can't decode")


@pytest.mark.parametrize("data, words", [
    ({"sbatch": {"comment=x\ntouch /tmp/PWNED\n#": "y"}}, "sbatch option name 'comment=x\\ntouch /tmp/PWNED\\n#'"),
    ({"sbatch": {"comment=x": "y"}}, "sbatch option name 'comment=x' is not an sbatch long option"),
    ({"sbatch": {"--constraint": "a100"}}, "without the leading '--'"),
    ({"sbatch": {7: "a100"}}, "sbatch option name 7"),
    ({"sbatch": {"comment": "two\nlines"}}, "sbatch.comment value 'two\\nlines' is not a one-line value"),
    ({"sbatch": {"comment": "tab\there"}}, "is not a one-line value"),
    ({"sbatch": {"constraint": ["a100", "h100"]}}, "sbatch.constraint value ['a100', 'h100']"),
    ({"sbatch": {"exclusive": None}}, "true for a flag without a value"),
    ({"sbatch": {"array": "0-999"}}, "sbatch.array is written by virnucpro itself"),
    ({"sbatch": {"output": "/tmp/elsewhere.log"}}, "sbatch.output is written by virnucpro itself"),
    ({"sbatch": {"mem_per_cpu": "1G"}}, "sbatch.mem_per_cpu is written by virnucpro itself"),
    ({"partition": "gpu\n"}, "partition 'gpu\\n' is not a valid SLURM name"),
    ({"stages": {"esm2": {"time": "1:00:00\n"}}}, "stages.esm2.time '1:00:00\\n' is not a SLURM time"),
    ({"stages": {"esm2": {"mem": "16G\n"}}}, "stages.esm2.mem '16G\\n' is not a memory size"),
    ({"account": "lab\n#SBATCH --qos=high"}, "account 'lab\\n#SBATCH --qos=high' is not a valid SLURM name"),
])
def test_values_that_would_end_an_sbatch_line_are_refused(tmp_path, data, words):
    profile = tmp_path / "site.yaml"
    profile.write_text(yaml.safe_dump({"partition": "gpu", **data}))
    text = refusal(str(profile))
    assert text.startswith(f"{profile}: ") and words in text, text


@pytest.mark.parametrize("flags, words", [
    ({"partition": "gpu\n"}, "command line: partition"),
    ({"partition": "gpu", "stages": {"esm2": {"time": "1:00:00\n"}}}, "command line: stages.esm2.time"),
])
def test_flags_ending_in_a_newline_are_refused(flags, words):
    assert refusal(None, flags).startswith(words)


def test_extra_sbatch_options_render_a_script_bash_accepts(tmp_path):
    profile = tmp_path / "site.yaml"
    profile.write_text(yaml.safe_dump({"partition": "gpu", "account": "lab", "sbatch": {
        "comment": "it's a \"run\" $HOME `x`", "constraint": "a100|h100", "exclusive": True, "nice": 10,
        "mail_type": "END,FAIL"}}))
    rendered = scripts(slurm.resolve_options(str(profile), {}), tmp_path)
    for stage, script in rendered.items():
        assert subprocess.run(["/bin/bash", "-n"], input=script, text=True).returncode == 0, stage
        block = script.split("\n")[1:script.split("\n").index("set -euo pipefail")]
        assert all(line.startswith("#SBATCH --") or not line.strip() or line.startswith("# ") for line in block), block
    assert "#SBATCH --exclusive\n" in rendered["esm2"] and "#SBATCH --mail-type=END,FAIL\n" in rendered["esm2"]


def test_the_owned_option_list_covers_every_directive_a_script_writes(tmp_path):
    """An `sbatch:` entry may not override what the tool writes: the list must name all of it."""
    options = slurm.resolve_options(None, {"partition": "gpu", "account": "lab", "qos": "high"})
    written = {line[len("#SBATCH --"):].split("=")[0] for script in scripts(options, tmp_path).values()
               for line in script.splitlines() if line.startswith("#SBATCH --")}
    assert written <= OWNED_SBATCH_OPTIONS, written - OWNED_SBATCH_OPTIONS


def test_submit_dry_run_with_an_alias_bomb_is_one_line(tmp_path, demo_models, example_inputs):
    profile = tmp_path / "bomb.yaml"
    profile.write_text(BOMB)
    done = subprocess.run([sys.executable, "-m", "virnucpro.cli", "submit", str(example_inputs), "--models", str(demo_models),
                           "-w", str(tmp_path / "w"), "--profile", str(profile), "--dry-run"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(profile) in errors[0] and "anchors and aliases" in errors[0], done.stderr


# ------------------------------------------------------------------ issue 33 item 10

@pytest.mark.parametrize("text,words", [
    ("partition: gpu\npreamble: [1, 2]\n", "preamble must be shell text or a list of lines of text, not [1, 2]"),
    ("partition: gpu\npreamble: ['module load cuda', {a: b}]\n", "preamble must be shell text or a list of lines"),
    ("partition: gpu\nsbatch: {D: /scratch}\n", "sbatch.D is a one-letter (short) option"),
    ("partition: gpu\nsbatch: {wrap: 'rm -rf ~'}\n", "sbatch.wrap changes what sbatch itself does"),
    ("partition: gpu\nsbatch: {test_only: true}\n", "sbatch.test_only changes what sbatch itself does"),
    ("partition: gpu\nsbatch: {wait: true}\n", "sbatch.wait changes what sbatch itself does"),
    ("partition: gpu\naccount: a\npartition: other\n", "line 3 not valid YAML (the key 'partition' is given twice"),
    ("partition: gpu\nstages:\n  esm2: {time: '1:00:00', time: '2:00:00'}\n", "the key 'time' is given twice"),
], ids=["preamble of numbers", "preamble with a mapping", "short option", "wrap", "test-only", "wait",
        "duplicate key", "duplicate stage key"])
def test_profile_values_sbatch_keys_and_duplicate_keys_refused_in_one_line(tmp_path, text, words):
    """Issue 33: `preamble: [1, 2]` was an internal TypeError; `D` and `wrap` became #SBATCH lines;
    a key given twice silently took the last value."""
    profile = tmp_path / "site.yaml"
    profile.write_text(text)
    message = refusal(str(profile))
    assert message.startswith(f"{profile}:") and words in message, message


def test_a_preamble_of_lines_and_long_sbatch_options_are_still_accepted(tmp_path):
    profile = tmp_path / "site.yaml"
    profile.write_text("partition: gpu\npreamble: ['module load cuda', 'source env.sh']\n"
                       "sbatch: {constraint: a100, mail-type: END}\n")
    options = slurm.resolve_options(str(profile), {})
    assert options.profile["preamble"] == "module load cuda\nsource env.sh"
    assert options.profile["sbatch"] == {"constraint": "a100", "mail-type": "END"}
