"""Output files byte for byte, from hand-chosen scores (ties included), through the real stages."""

import gzip
import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from virnucpro.errors import InputError, StaleInputError
from virnucpro.pipeline import STAGE, reset_by_options
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
    "read_id\tlength\tchunks\tframes\tviral_chunks\tmax_virus_score\tcall\tvirus_probability\tfdr\n"
    "r1\t24\t1\t3\t0\t0.6\tothers\tNA\tNA\n"
    "r2\t6\t1\t0\t0\tNA\tno_frames\tNA\tNA\n"
    "r3\t10\t1\t6\t0\t0.5\tothers\tNA\tNA\n"
)


def _prepared(tmp_path, shards, scores=SCORES, fasta_a=FASTA_A, **options) -> StageContext:
    """prepare run for real, predictions from `scores`: what consensus reads."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "a.fa").write_bytes(fasta_a.encode() if isinstance(fasta_a, str) else fasta_a)
    (tmp_path / "b.fa").write_text(FASTA_B)
    config = RunConfig(inputs_list="", inputs=[str(tmp_path / "a.fa"), str(tmp_path / "b.fa")], input_names=["a", "b"],
                       chunk_length=500, shards=shards, models=ModelSpec("esm", "dnabert", "clf"), **options)
    ctx = StageContext(workdir=Workdir(tmp_path / "w"), config=config)
    prepare.prepare(ctx)
    for shard in range(shards):
        ids = read_shard_frames(ctx.workdir.shard_frames(shard)).frame_ids
        matrix = np.array([scores[i] for i in ids], dtype=np.float32).reshape(len(ids), 2)
        write_matrix(ctx.workdir.predictions(shard), ids, matrix, name="scores")
    return ctx


def _run(tmp_path, shards, scores=SCORES, min_score=None, **options):
    ctx = _prepared(tmp_path, shards, scores, **options)
    consensus.consensus(ctx, min_score)
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
        assert (b / "reads.tsv").read_text().splitlines()[1] == "r1\t9\t1\t0\t0\tNA\tno_frames\tNA\tNA"


def test_chunk_tie_is_virus(tmp_path):
    # the per-chunk rule is max(score2) >= max(score1): an exact tie over the chunk is True
    scores = dict(SCORES, **{"r3_chunk_1F1": (0.5, 0.5)})
    workdir = _run(tmp_path, 2, scores)
    lines = (workdir.result_dir("a") / "prediction_results_highestscore.csv").read_text().splitlines()
    assert lines[2] == "r3_chunk_1\tTrue"
    reads = (workdir.result_dir("a") / "reads.tsv").read_text().splitlines()
    assert reads[3] == "r3\t10\t1\t6\t1\t0.5\tvirus\tNA\tNA"


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


# r1 and r3 of FASTA_A as a user's file may hold them: description, wrapped lines, CRLF, RNA
# letters, a blank line; r1 (best score 0.6) and r3 (0.5) are viral at --min-score 0.5, r2 is not.
RAW_R1 = b">r1 first read\tof sample\nATGAAACCCGGG\nTTTAAACCCGGG\n"
RAW_R3 = b">r3\r\nGCUGCUGCUG\r\n\n"
FASTA_A_RAW = RAW_R1 + b">r2\nNNNNNN\n" + RAW_R3


def test_viral_fasta_holds_the_input_records_of_the_viral_reads_byte_for_byte(tmp_path):
    workdir = _run(tmp_path / "t", 2, min_score=0.5, fasta_a=FASTA_A_RAW)
    assert workdir.result_file("a", "viral.fna").read_bytes() == RAW_R1 + RAW_R3.replace(b"\r", b"")
    assert workdir.result_file("b", "viral.fna").read_bytes() == b""  # no viral read: an empty file
    workdir = _run(tmp_path / "u", 2, min_score=0.55, fasta_a=FASTA_A_RAW)
    assert workdir.result_file("a", "viral.fna").read_bytes() == RAW_R1
    names = [path.relative_to(workdir.results).as_posix() for path in STAGE["consensus"].outputs(workdir, 0, _config())]
    assert names == ["a/prediction_results.txt", "a/prediction_results_highestscore.csv", "a/reads.tsv", "a/viral.fna",
                     "b/prediction_results.txt", "b/prediction_results_highestscore.csv", "b/reads.tsv", "b/viral.fna",
                     "index.tsv", "virnucpro_mqc.tsv"]  # what status and healing check


def _config(**fields) -> RunConfig:
    return RunConfig(**{"inputs_list": "", "inputs": ["a.fa", "b.fa"], "input_names": ["a", "b"], "chunk_length": 500,
                        "shards": 1, "models": ModelSpec("esm", "dnabert", "clf"), **fields})


def test_an_input_changed_after_prepare_is_refused_when_its_viral_reads_are_gone(tmp_path):
    ctx = _prepared(tmp_path, 1, fasta_a=FASTA_A_RAW)
    (tmp_path / "a.fa").write_bytes(b">other\nACGT\n")
    with pytest.raises(InputError, match=r"a\.fa: holds 0 of the 2 reads called virus; the file changed"):
        consensus.consensus(ctx, 0.5)
    assert not [path for path in ctx.workdir.results.rglob("*") if path.is_file()]  # nothing half-written


def test_index_maps_each_input_to_its_result_folder(tmp_path):
    workdir = _run(tmp_path, 1)
    assert workdir.results_index.read_text() == f"input\tresults\n{tmp_path}/a.fa\ta\n{tmp_path}/b.fa\tb\n"
    assert consensus.tsv_field("x\ty\\z\n") == "x\\ty\\\\z\\n"  # one field, one line, whatever the path


def test_multiqc_custom_content_header_and_table(tmp_path):
    workdir = _run(tmp_path, 2, min_score=0.55)
    text = workdir.multiqc_summary.read_text()
    assert workdir.multiqc_summary.name.endswith("_mqc.tsv")  # how MultiQC finds custom content
    comments = [line[2:] for line in text.splitlines() if line.startswith("# ")]
    header = yaml.safe_load("\n".join(comments))
    assert header["id"] == "virnucpro" and header["plot_type"] == "table" and header["section_name"]
    assert header["pconfig"]["id"] and header["headers"]["viral_percent"]["max"] == 100
    rows = [line.split("\t") for line in text.splitlines() if not line.startswith("#")]
    assert rows == [["Sample", "reads", "bases", "chunks", "frames", "reads_without_frames", "viral_reads", "viral_percent",
                     "estimated_virus_share", "virus_share_low", "virus_share_high"],
                    ["a", "3", "40", "3", "9", "1", "1", "33.33", "NA", "NA", "NA"],
                    ["b", "1", "9", "1", "0", "1", "0", "0.00", "NA", "NA", "NA"]]


def test_multiqc_shows_every_column_of_the_summary(tmp_path):
    """Issue 30 item 8: MultiQC (1.35) showed only '% viral'; it shows only the columns the
    `headers:` block names. The real multiqc (the test extra) on a results folder."""
    workdir = _run(tmp_path, 2, min_score=0.55)
    done = subprocess.run([sys.executable, "-m", "multiqc", str(workdir.results), "-o", str(tmp_path / "mqc"), "--no-ai",
                           "--quiet", "--no-version-check"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    data = json.loads((tmp_path / "mqc" / "multiqc_data" / "multiqc_data.json").read_text())
    (dataset,) = data["report_plot_data"]["virnucpro_table"]["datasets"]
    text = workdir.multiqc_summary.read_text()
    columns = next(line for line in text.splitlines() if not line.startswith("#")).split("\t")[1:]
    assert list(dataset["header_by_metric"]) == [f"virnucpro-{column}" for column in columns]  # all, in order
    titles = [header["title"] for header in dataset["header_by_metric"].values()]
    assert "% viral" in titles and "Reads without frames" in titles


def test_compress_gzips_the_result_files_reproducibly_and_a_change_redoes_consensus_only(tmp_path):
    plain = _run(tmp_path / "plain", 3, min_score=0.5)
    packed = _run(tmp_path / "packed", 3, min_score=0.5, compress=True)
    for name in ("a", "b"):
        for path, gz in zip(plain.result_files(name), packed.result_files(name, compress=True)):
            assert gz.name == path.name + ".gz" and not (gz.parent / path.name).exists()
            assert gzip.decompress(gz.read_bytes()) == path.read_bytes()
    first = packed.result_file("a", "reads.tsv", True).read_bytes()
    root = tmp_path / "packed"
    ctx = StageContext(workdir=packed, config=_config(shards=3, inputs=[str(root / "a.fa"), str(root / "b.fa")],
                                                      compress=True))
    consensus.consensus(ctx, 0.5)
    assert packed.result_file("a", "reads.tsv", True).read_bytes() == first  # no time or name in the gzip header
    ctx.config.compress = False  # the run changed its mind: the .gz files give way to plain ones
    consensus.consensus(ctx, 0.5)
    assert sorted(p.name for p in packed.result_dir("a").iterdir()) == sorted(p.name for p in plain.result_dir("a").iterdir())
    assert reset_by_options(_config(), _config(compress=True)) == ["consensus"]
    for option, value in (("calibration", "/c.json"), ("calibration_sha256", "ab" * 32), ("virus_share", 0.2),
                          ("max_fdr", 0.1)):
        assert reset_by_options(_config(), _config(**{option: value})) == ["consensus"], option


def test_without_a_calibration_the_columns_are_na_and_the_run_says_why_once(tmp_path, capfd):
    workdir = _run(tmp_path, 2)
    for name in ("a", "b"):
        rows = [line.split("\t") for line in (workdir.result_dir(name) / "reads.tsv").read_text().splitlines()[1:]]
        assert {tuple(row[-2:]) for row in rows} == {("NA", "NA")}
    assert capfd.readouterr().err.count("no calibration: reads.tsv's virus_probability and fdr are NA") == 1


def test_calibrated_reads_table_and_max_fdr_calls_a_frameless_read_too(tmp_path):
    """With a calibration, reads.tsv's virus_probability and fdr are numbers, and --max-fdr calls
    exactly the reads whose printed fdr is within it, a read without frames included (here the
    labelled frameless reads were viral, and the share is given high)."""
    from virnucpro.calibration_meta import file_sha256
    from virnucpro.evaluation.calibration import fit_calibration

    rng = np.random.default_rng(0)
    truth = rng.random(4000) < 0.5
    frames = np.where(rng.random(4000) < 0.2, 0, rng.integers(1, 7, 4000))
    frames[~truth & (frames == 0)] = 3  # only viral reads lack frames
    scores = np.where(frames > 0, np.clip(rng.normal(0.35 + 0.3 * truth, 0.15), 0, 1), 0.0)
    path = tmp_path / "calibration.json"
    fit_calibration(truth, scores, frames, replicates=2).save(path)
    workdir = _run(tmp_path / "run", 2, calibration=str(path), calibration_sha256=file_sha256(path), virus_share=0.9,
                   max_fdr=0.2)
    header, *rows = [line.split("\t") for line in (workdir.result_dir("a") / "reads.tsv").read_text().splitlines()]
    assert header[-2:] == ["virus_probability", "fdr"]
    by_id = {row[0]: dict(zip(header, row)) for row in rows}
    for row in by_id.values():
        assert (row["call"] == "virus") == (float(row["fdr"]) <= 0.2)
    assert by_id["r2"]["frames"] == "0" and by_id["r2"]["call"] == "virus"
    assert float(by_id["r2"]["virus_probability"]) > 0.95
    assert ">r2" in (workdir.result_dir("a") / "viral.fna").read_text()
    summary = [line.split("\t") for line in workdir.multiqc_summary.read_text().splitlines() if not line.startswith("#")]
    assert summary[1][-3:] == ["0.9", "NA", "NA"]  # a given share has no interval
