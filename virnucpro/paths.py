"""Every path virnucpro reads or writes inside a workdir is named here, and only here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STAGES = ("prepare", "dnabert", "esm2", "predict", "consensus")
SHARDED_STAGES = ("dnabert", "esm2", "predict")


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

    def shard_frames(self, shard: int) -> Path:
        return self.root / "shards" / f"{shard:05d}.frames.tsv"

    # embeddings and predictions
    def embeddings(self, kind: str, shard: int) -> Path:
        return self.root / "embeddings" / kind / f"{shard:05d}.h5"

    def embedding_parts(self, kind: str, shard: int) -> Path:
        """Folder of checkpointed pieces of a shard still being embedded."""
        return self.root / "embeddings" / kind / f"{shard:05d}.partial"

    def predictions(self, shard: int) -> Path:
        return self.root / "predictions" / f"{shard:05d}.h5"

    # results
    @property
    def results(self) -> Path:
        return self.root / "results"

    def result_dir(self, input_name: str) -> Path:
        return self.results / input_name

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def slurm_dir(self) -> Path:
        return self.root / "slurm"

    @property
    def dry_run_dir(self) -> Path:
        return self.slurm_dir / "dry-run"

    # ownership, for clearing what a killed writer left behind
    @property
    def run_files(self) -> tuple[Path, ...]:
        """Run-level files, written only by planning or under the state lock."""
        return (self.config, self.state, self.provenance, self.hash_cache)

    def written_by(self, stage: str, shard: int) -> tuple[Path, ...]:
        """Files, and folders written only by (stage, shard): whoever holds that shard may clear
        temp files there, because no other live process writes them."""
        error_log = self.stage_log(stage) / f"shard-{shard:05d}.error.log"
        if stage == "prepare":
            return (self.prepare_dir, self.root / "shards", error_log)
        if stage in ("dnabert", "esm2"):
            return (self.embeddings(stage, shard), self.embedding_parts(stage, shard), error_log)
        if stage == "predict":
            return (self.predictions(shard), error_log)
        if stage == "consensus":  # not report/: `virnucpro-slurm report` may be writing it at any time
            return (self.results, error_log)
        raise ValueError(f"unknown stage {stage!r}")


PREDICTION_RESULTS = "prediction_results.txt"
HIGHEST_SCORE = "prediction_results_highestscore.csv"
READS_TABLE = "reads.tsv"
