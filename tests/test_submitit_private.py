"""submitit's private API, as virnucpro/orchestration/slurm/submitit_private.py uses it.

submitit has no public dry run, no way to submit a script we rendered and no one-task arrays, so
that module calls private names. This test fails loudly, naming what changed, when an upgrade
moves or renames one of them: adapt submitit_private.py and the submitit pin in setup.cfg."""

import inspect
import shlex

import pytest

slurm = pytest.importorskip("submitit.slurm.slurm")

from submitit.core import utils  # noqa: E402
from submitit.helpers import DelayedSubmission  # noqa: E402

from virnucpro.orchestration.slurm import submitit_private  # noqa: E402

# every keyword sbatch.sbatch_parameters passes to _make_sbatch_string
PARAMETERS = {"command", "folder", "job_name", "partition", "time", "cpus_per_task", "mem", "account", "qos",
              "dependency", "map_count", "array_parallelism", "wckey", "use_srun", "setup", "additional_parameters"}


def test_the_sbatch_writer_takes_our_parameters():
    writer = getattr(slurm, "_make_sbatch_string", None)
    assert writer is not None, "submitit.slurm.slurm._make_sbatch_string is gone"
    missing = PARAMETERS - set(inspect.signature(writer).parameters)
    assert not missing, f"_make_sbatch_string no longer takes {sorted(missing)}"


def test_the_sbatch_writer_renders_what_we_rely_on(tmp_path):
    text = submitit_private.sbatch_text(
        command="exec python -u -m submitit.core._submit /f", folder=tmp_path, job_name="virnucpro-esm2", partition="gpu",
        time="1:00:00", cpus_per_task=8, mem="64G", account=None, qos=None, dependency="afterok:12", map_count=3,
        array_parallelism=2, wckey=None, use_srun=False, setup=["set -euo pipefail"],
        additional_parameters={"gres": "gpu:1", "requeue": True, "kill-on-invalid-dep": "yes",
                               "output": str(tmp_path / "%A_%a.out")})
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    for option in ("--job-name=virnucpro-esm2", "--partition=gpu", "--time=1:00:00", "--cpus-per-task=8", "--mem=64G",
                   "--dependency=afterok:12", "--array=0-2%2", "--gres=gpu:1", "--requeue", "--kill-on-invalid-dep=yes",
                   f"--output={shlex.quote(str(tmp_path / '%A_%a.out'))}"):
        assert f"#SBATCH {option}" in lines, f"_make_sbatch_string no longer writes '#SBATCH {option}'"
    assert "exec python -u -m submitit.core._submit /f" in lines and "srun" not in text
    assert lines.index("set -euo pipefail") < lines.index("exec python -u -m submitit.core._submit /f")


def test_the_executor_hooks_submit_array_overrides_and_calls():
    executor = slurm.SlurmExecutor
    assert list(inspect.signature(executor._make_submission_file_text).parameters) == ["self", "command", "uid"], \
        "SlurmExecutor._make_submission_file_text(command, uid) changed"
    assert list(inspect.signature(executor._submit_command).parameters) == ["self", "command"], \
        "SlurmExecutor._submit_command(command) changed"
    assert isinstance(inspect.getattr_static(executor, "_submitit_command_str"), property), \
        "SlurmExecutor._submitit_command_str is no longer a property"
    assert "submitted_pickle" in inspect.getsource(utils.JobPaths), "JobPaths has no 'submitted_pickle' path"
    assert "name" in inspect.signature(utils.JobPaths.move_temporary_file).parameters, \
        "JobPaths.move_temporary_file(tmp_path, name) changed"
    assert issubclass(utils.FailedJobError, Exception) and issubclass(utils.FailedSubmissionError, Exception)
    assert callable(DelayedSubmission.dump)


def test_a_task_finds_its_pickle_where_submit_array_puts_it(tmp_path):
    """submit_array moves task i's call to what SlurmJob(folder, 'A_i').paths.submitted_pickle names,
    which is the file submitit's job runner loads for SLURM_ARRAY_JOB_ID=A, SLURM_ARRAY_TASK_ID=i."""
    paths = slurm.SlurmJob(folder=tmp_path, job_id="12_3").paths
    assert paths.submitted_pickle.name == "12_3_submitted.pkl"
    call = DelayedSubmission(print, "x")
    temp = tmp_path / ".call.pkl"
    call.dump(temp)
    paths.move_temporary_file(temp, "submitted_pickle")
    assert DelayedSubmission.load(paths.submitted_pickle).args == ("x",)
