"""Every path virnucpro reads or writes inside a workdir is named here, and only here.

Which stage writes which of them is declared in `virnucpro.pipeline` (Stage.outputs / owns).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .pipeline import SHARDED_STAGES, STAGE, STAGES  # noqa: F401 (STAGES: the pipeline's, importable from here)

PREDICTION_RESULTS = "prediction_results.txt"
HIGHEST_SCORE = "prediction_results_highestscore.csv"
READS_TABLE = "reads.tsv"
VIRAL_FASTA = "viral.fna"  # the records of the reads called virus, as they were in the input
RESULT_FILES = (PREDICTION_RESULTS, HIGHEST_SCORE, READS_TABLE, VIRAL_FASTA)
RESULTS_INDEX = "index.tsv"
MULTIQC_SUMMARY = "virnucpro_mqc.tsv"  # MultiQC finds custom content by the _mqc suffix
COMPRESSED_SUFFIX = ".gz"
REPORT_INDEX = "index.html"
EVALUATION_METRICS = "metrics.json"


@dataclass(frozen=True)
class Workdir:
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root).absolute())

    # run-level files
    @property
    def config(self) -> Path:
        return self.root / "run.json"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def state_records(self) -> Path:
        """W/state.d/: one record per (stage, shard), the truth state.json is folded from."""
        return self.root / "state.d"

    @property
    def state_lock(self) -> Path:
        return self.root / ".state.lock"

    @property
    def hash_cache(self) -> Path:
        return self.root / ".hash-cache.json"

    @property
    def provenance(self) -> Path:
        return self.root / "provenance.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def stage_log(self, stage: str) -> Path:
        return self.logs / stage

    def error_log(self, stage: str, shard: int) -> Path:
        """The traceback of a (stage, shard) that failed outside SLURM."""
        return self.stage_log(stage) / f"shard-{shard:05d}.error.log"

    def run_log(self) -> Path:
        """The log file of a command starting now (virnucpro-<timestamp>.log)."""
        return self.logs / f"virnucpro-{time.strftime('%Y%m%d-%H%M%S')}.log"

    # prepare
    @property
    def prepare_dir(self) -> Path:
        return self.root / "prepare"

    @property
    def frames_spool(self) -> Path:
        return self.prepare_dir / "frames.spool.tsv"

    @property
    def prepare_summary(self) -> Path:
        return self.prepare_dir / "summary.json"

    def reads_table(self, input_index: int) -> Path:
        return self.prepare_dir / f"reads-{input_index:04d}.tsv"

    @property
    def shards_dir(self) -> Path:
        return self.root / "shards"

    def shard_frames(self, shard: int) -> Path:
        return self.root / f"shards/{shard:05d}.frames.tsv"  # one join: status builds one per shard

    def split_keys(self, shard: int) -> Path:
        """A training's key of each frame of the shard: its unit of the held-out split (holdout.py)."""
        return self.root / f"shards/{shard:05d}.split-keys.npy"

    @property
    def split_keys_spool(self) -> Path:
        return self.prepare_dir / "split-keys.spool"

    # embeddings and predictions
    @property
    def embeddings_dir(self) -> Path:
        return self.root / "embeddings"

    def embeddings(self, kind: str, shard: int) -> Path:
        return self.root / f"embeddings/{kind}/{shard:05d}.h5"  # one join: status builds two per shard

    def embedding_parts(self, kind: str, shard: int) -> Path:
        """Folder of checkpointed pieces of a shard still being embedded."""
        return self.embeddings_dir / kind / f"{shard:05d}.partial"

    @property
    def predictions_dir(self) -> Path:
        return self.root / "predictions"

    def predictions(self, shard: int) -> Path:
        return self.root / f"predictions/{shard:05d}.h5"

    # results
    @property
    def results(self) -> Path:
        return self.root / "results"

    def result_dir(self, input_name: str) -> Path:
        return self.results / input_name

    def result_files(self, input_name: str, compress: bool = False) -> tuple[Path, ...]:
        """What consensus writes for one input (RESULT_FILES): per frame, per chunk (the
        original's), per read, the viral reads' records; gzipped (+ .gz) with --compress."""
        return tuple(self.result_file(input_name, name, compress) for name in RESULT_FILES)

    def result_file(self, input_name: str, name: str, compress: bool = False) -> Path:
        """One of RESULT_FILES of an input, as written with or without --compress."""
        return self.result_dir(input_name) / (name + COMPRESSED_SUFFIX if compress else name)

    @property
    def results_index(self) -> Path:
        """W/results/index.tsv: each input's path and its result folder."""
        return self.results / RESULTS_INDEX

    @property
    def multiqc_summary(self) -> Path:
        """W/results/virnucpro_mqc.tsv: the per-input summary as MultiQC custom content."""
        return self.results / MULTIQC_SUMMARY

    # training and evaluation
    @property
    def training_dir(self) -> Path:
        """W/training/: the train stage's checkpoint, from which an interrupted training resumes."""
        return self.root / "training"

    @property
    def training_checkpoint(self) -> Path:
        return self.training_dir / "checkpoint.safetensors"

    @property
    def training_state(self) -> Path:
        return self.training_dir / "checkpoint.json"

    @property
    def classifier_dir(self) -> Path:
        return self.root / "classifier"

    @property
    def classifier_weights(self) -> Path:
        return self.classifier_dir / "classifier.safetensors"

    @property
    def classifier_meta(self) -> Path:
        return self.classifier_dir / "classifier.json"

    @property
    def evaluation_dir(self) -> Path:
        return self.root / "evaluation"

    def evaluation_result(self, name: str) -> Path:
        """W/evaluation/NAME/: one classifier's evaluation (NAME: RunConfig.evaluation_name), kept
        beside those of other classifiers evaluated in this workdir; W/evaluation/index.html compares them."""
        return self.evaluation_dir / name

    def evaluation_metrics(self, name: str) -> Path:
        return self.evaluation_result(name) / EVALUATION_METRICS

    @property
    def evaluations_page(self) -> Path:
        return self.evaluation_dir / "index.html"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def report_lock(self) -> Path:
        return self.root / ".report.lock"

    @property
    def report_index(self) -> Path:
        return self.report_file(REPORT_INDEX)

    def report_file(self, name: str) -> Path:
        """A file of the report (the page, its figures): W/report/<name>."""
        return self.report_dir / name

    @property
    def output_folders(self) -> tuple[Path, ...]:
        """Folders holding what the stages and the report computed (all of it can be recomputed)."""
        return (self.prepare_dir, self.shards_dir, self.embeddings_dir, self.predictions_dir, self.results,
                self.report_dir, self.training_dir, self.classifier_dir, self.evaluation_dir)

    # SLURM
    @property
    def slurm_dir(self) -> Path:
        return self.root / "slurm"

    @property
    def dry_run_dir(self) -> Path:
        return self.slurm_dir / "dry-run"

    def dry_run_script(self, stage: str) -> Path:
        return self.dry_run_dir / f"{stage}.sh"

    @property
    def jobs(self) -> Path:
        """W/slurm/jobs.json: every submission's job ids (what `cancel` and `status` read)."""
        return self.slurm_dir / "jobs.json"

    @property
    def jobs_lock(self) -> Path:
        return self.slurm_dir / ".jobs.lock"

    def submitit_dir(self, stage: str) -> Path:
        """submitit's folder of a stage (pickles, results, submitted scripts); no %j for arrays."""
        return self.slurm_dir / "submitit" / stage

    def task_log_pattern(self, stage: str, suffix: str) -> str:
        """sbatch --output/--error of a stage's array tasks (%A array job id, %a task index)."""
        return str(self.stage_log(stage) / f"%A_%a.{suffix}")

    def task_log(self, stage: str, array_job_id: str, index: str | int, suffix: str = "err") -> Path:
        return self.stage_log(stage) / f"{array_job_id}_{index}.{suffix}"

    # ownership, for clearing what a killed writer left behind
    @property
    def run_files(self) -> tuple[Path, ...]:
        """Run-level files, written only by the workdir's one writer (planning) or under the state
        lock; the state records of SLURM tasks too, which run only while no one plans."""
        return (self.config, self.state, self.state_records, self.provenance, self.hash_cache)

    def written_by(self, stage: str, shard: int) -> tuple[Path, ...]:
        """Files, and folders written only by (stage, shard): whoever holds that shard may clear
        temp files there, because no other live process writes them (pipeline.Stage.owns)."""
        if stage not in STAGE:
            raise ValueError(f"unknown stage {stage!r}")
        return (*STAGE[stage].owns(self, shard), self.error_log(stage, shard))
