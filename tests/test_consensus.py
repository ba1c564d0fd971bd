"""Output files byte for byte, from hand-chosen scores (ties included), through the real stages."""

import numpy as np
import pytest

from virnucpro.errors import StaleInputError
from virnucpro.orchestration.config import ModelSpec, RunConfig
from virnucpro.orchestration.runner import StageContext
from virnucpro.paths import Workdir
from virnucpro.stages import consensus, prepare
from virnucpro.storage import read_shard_frames, write_matrix

# r1: F1 MKPGFKPG, R1 PGFKPGFH, R2 PGLNPGF (see test_sequences); r2: no frame; r3: all six frames
# (F1 AAA, F2 LLL, F3 CC, R1 QQQ, R2 SSS, R3 AA).
FASTA_A = ">r1 first read\nATGAAACCCGGGTTTAAACCCGGG\n>r2\nNNNNNN\n>r3\nGCTGCTGCTG\n"
FASTA_B = ">r1\nNNNNNNNNN\n"  # same read id as in input A, kept apart; yields no frame

SCORES = {
    "r1_chunk_1F1": (0.75, 0.25),
    "r1_chunk_1R1": (0.5, 0.5),          # exact tie: 'others' (torch.max picks index 0)
    "r1_chunk_1R2": (0.4, 0.6),
    "r3_chunk_1F1": (0.87899388, 0.12100612),
    "r3_chunk_1F2": (0.5, 0.5),
    "r3_chunk_1F3": (0.5, 0.5),
    "r3_chunk_1R1": (0.5, 0.5),
    "r3_chunk_1R2": (0.5, 0.5),
    "r3_chunk_1R3": (0.5, 0.5),
}

EXPECTED_PREDICTIONS = (
    "Sequence_ID\tPrediction\tscore1\tscore2\n"
    "r1_chunk_1F1\tothers\t0.75\t0.25\n"
    "r1_chunk_1R1\tothers\t0.5\t0.5\n"
    "r1_chunk_1R2\tvirus\t0.4\t0.6\n"
    "r3_chunk_1F1\tothers\t0.87899387\t0.12100612\n"
    "r3_chunk_1F2\tothers\t0.5\t0.5\n"
    "r3_chunk_1F3\tothers\t0.5\t0.5\n"
    "r3_chunk_1R1\tothers\t0.5\t0.5\n"
    "r3_chunk_1R2\tothers\t0.5\t0.5\n"
    "r3_chunk_1R3\tothers\t0.5\t0.5\n"
)
# per chunk: r1: max s2 0.6 < max s1 0.75 -> False; r3: max s2 0.5 >= max s1 0.87899387? no -> False
EXPECTED_HIGHEST = "Modified_ID\tIs_Virus\nr1_chunk_1\tFalse\nr3_chunk_1\tFalse\n"
EXPECTED_READS = (
    "read_id\tlength\tchunks\tframes\tviral_chunks\tmax_virus_score\tcall\n"
    "r1\t24\t1\t3\t0\t0.6\tothers\n"
    "r2\t6\t1\t0\t0\tNA\tno_frames\n"
    "r3\t10\t1\t6\t0\t0.5\tothers\n"
)


def _prepared(tmp_path, shards, scores=SCORES) -> StageContext:
    """prepare run for real, predictions from `scores`: what consensus reads."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "a.fa").write_text(FASTA_A)
    (tmp_path / "b.fa").write_text(FASTA_B)
    config = RunConfig(inputs_list="", inputs=[str(tmp_path / "a.fa"), str(tmp_path / "b.fa")], input_names=["a", "b"],
                       chunk_length=500, shards=shards, models=ModelSpec("esm", "dnabert", "clf"))
    ctx = StageContext(workdir=Workdir(tmp_path / "w"), config=config)
    prepare.prepare(ctx)
    for shard in range(shards):
        ids = read_shard_frames(ctx.workdir.shard_frames(shard)).frame_ids
        matrix = np.array([scores[i] for i in ids], dtype=np.float32).reshape(len(ids), 2)
        write_matrix(ctx.workdir.predictions(shard), ids, matrix, name="scores")
    return ctx


def _run(tmp_path, shards, scores=SCORES):
    ctx = _prepared(tmp_path, shards, scores)
    consensus.consensus(ctx)
    return ctx.workdir


def test_outputs_byte_for_byte(tmp_path):
    for shards in (1, 4, 9):  # 9 shards: one frame each, r3's chunk cut five times
        workdir = _run(tmp_path / f"s{shards}", shards)
        a = workdir.result_dir("a")
        assert (a / "prediction_results.txt").read_bytes() == EXPECTED_PREDICTIONS.encode()
        assert (a / "prediction_results_highestscore.csv").read_bytes() == EXPECTED_HIGHEST.encode()
        assert (a / "reads.tsv").read_bytes() == EXPECTED_READS.encode()
        b = workdir.result_dir("b")  # no frame at all: header-only files
        assert (b / "prediction_results.txt").read_text() == "Sequence_ID\tPrediction\tscore1\tscore2\n"
        assert (b / "prediction_results_highestscore.csv").read_text() == "Modified_ID\tIs_Virus\n"
        assert (b / "reads.tsv").read_text().splitlines()[1] == "r1\t9\t1\t0\t0\tNA\tno_frames"


def test_chunk_tie_is_virus(tmp_path):
    # the per-chunk rule is max(score2) >= max(score1): an exact tie over the chunk is True
    scores = dict(SCORES, **{"r3_chunk_1F1": (0.5, 0.5)})
    workdir = _run(tmp_path, 2, scores)
    lines = (workdir.result_dir("a") / "prediction_results_highestscore.csv").read_text().splitlines()
    assert lines[2] == "r3_chunk_1\tTrue"
    reads = (workdir.result_dir("a") / "reads.tsv").read_text().splitlines()
    assert reads[3] == "r3\t10\t1\t6\t1\t0.5\tvirus"


# prepare's read table of input a: header, r1 (3 frames), r2 (none), r3 (6 frames)
@pytest.mark.parametrize("damage", [
    lambda lines: ["junk\n"],
    lambda lines: lines[1:],  # no header
    lambda lines: [lines[0], lines[1], lines[3]],  # a read without frames lost
    lambda lines: [*lines[:3], lines[3][:-3]],  # cut inside the last line
    lambda lines: [lines[0], lines[1].replace("\t", "\t\t", 1), *lines[2:]],  # a column too many
    lambda lines: [lines[0], lines[3], lines[2], lines[1]],  # reads out of order
    lambda lines: [lines[0], lines[1].replace("24", "2x"), *lines[2:]],  # not a number
], ids=["garbage", "no header", "row missing", "cut short", "wrong column count", "out of order", "not a number"])
def test_a_damaged_read_table_is_prepares_to_redo(tmp_path, damage):
    ctx = _prepared(tmp_path, 2)
    table = ctx.workdir.reads_table(0)
    table.write_text("".join(damage(table.read_text().splitlines(True))))
    with pytest.raises(StaleInputError, match=f"^{table}: prepare's read table is damaged") as refused:
        consensus.consensus(ctx)
    assert (refused.value.stage, refused.value.shard) == ("prepare", 0)
    assert not [path for path in ctx.workdir.results.rglob("*") if path.is_file()]  # no result half-written


def test_shards_are_token_balanced_and_contiguous(tmp_path):
    workdir = _run(tmp_path, 3)
    ids = [i for s in range(3) for i in read_shard_frames(workdir.shard_frames(s)).frame_ids]
    assert ids == list(SCORES)  # input order preserved across shard boundaries


def test_float32_scores_print_as_the_original_prints_them():
    """The stage formats whole columns with astype(str); the original printed str(np.float32)."""
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.random(20000, dtype=np.float32), np.exp(-40 * rng.random(5000)).astype(np.float32),
                             np.array([0, 1, 0.5, 1e-5, 1e-45, 3.4e-38, 0.99999994, 0.87899387, 0.12100612], np.float32)])
    assert values.astype(str).tolist() == [str(v) for v in values]
