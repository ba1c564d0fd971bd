"""Every use of submitit's private API, in one place (tests/test_submitit_private.py checks each).

submitit (1.5) has no public way to get the sbatch text of a submission (no dry run), to submit
a script we rendered ourselves, or to submit a one-task array (a single call becomes a plain job).
So, with names that may change in any submitit release:

- `submitit.slurm.slurm._make_sbatch_string(command, folder, **parameters)`: the sbatch writer
  SlurmExecutor itself uses (our scripts are what submitit would write);
- `SlurmExecutor._make_submission_file_text(command, uid)`: overridden to return our script;
- `SlurmExecutor._submit_command(command)` and `._submitit_command_str`: run sbatch on it and
  parse the job id;
- `SlurmJob(folder, job_id).paths.move_temporary_file(path, "submitted_pickle")`: where task i of
  array A finds its pickled call (A_i_submitted.pkl), as submitit's job runner expects.

The public parts used elsewhere: `submitit.helpers.DelayedSubmission` (a pickled call) and
submitit's job runner (`python -m submitit.core._submit FOLDER`, the command of every task).
If the test fails after a submitit upgrade, adapt this module and the setup.cfg pin with it.
"""

from __future__ import annotations

import uuid
from pathlib import Path


def sbatch_text(command: str, folder: Path, **parameters) -> str:
    """submitit's sbatch script for `command` with these parameters (names as _make_sbatch_string's)."""
    from submitit.slurm.slurm import _make_sbatch_string

    return _make_sbatch_string(command=command, folder=folder, **parameters)


def submit_array(folder: Path, script: str, calls: list) -> tuple[str, Path]:
    """sbatch `script` (an array of len(calls) tasks); task i runs calls[i] (DelayedSubmissions).
    Returns (array job id, path of the submitted script)."""
    from submitit.slurm.slurm import SlurmExecutor, SlurmJob

    class ArraySubmitter(SlurmExecutor):
        def _make_submission_file_text(self, command: str, uid: str) -> str:
            return script

    executor = ArraySubmitter(folder)
    executor.folder.mkdir(parents=True, exist_ok=True)
    pickles = []
    for call in calls:
        path = executor.folder / f".{uuid.uuid4().hex}.pkl"
        call.dump(path)
        pickles.append(path)
    job = executor._submit_command(executor._submitit_command_str)
    for index, path in enumerate(pickles):
        SlurmJob(folder=executor.folder, job_id=f"{job.job_id}_{index}").paths.move_temporary_file(path, "submitted_pickle")
    return job.job_id, job.paths.submission_file


def submission_errors() -> tuple[type[BaseException], ...]:
    """What a refused sbatch raises from `submit_array` (besides OSError / SubprocessError)."""
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    return FailedJobError, FailedSubmissionError
