"""Bad and odd input through the real CLI: one table of cases, easy to extend.

Every error case runs `virnucpro-slurm run` in a subprocess and must exit != 0 with exactly one
`error:` line that names the file or record and says what to do, and no traceback. Nothing
already written may change: each case is checked against a snapshot of a complete run (most
plan-time cases even point at that run's workdir), and no temporary or partial file may be left.

Accepted-input cases (odd but valid FASTA) are not run one by one: their files together form the
inputs of that one complete run, and each case then checks its own part of the results.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import resource
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from virnucpro.fasta import read_fasta
from virnucpro.sequences import frames_of_read

CLI = [shutil.which("virnucpro-slurm")] if shutil.which("virnucpro-slurm") else [sys.executable, "-m", "virnucpro.cli"]
CODING = "ATG" + "GCTGAAAAACTG" * 12  # F1 has no stop: every read built on it yields at least one frame


def run_cli(*args, limit_file_size: int | None = None) -> subprocess.CompletedProcess:
    def limit():  # a real write failure (EFBIG) that hits root too, unlike chmod
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_size, limit_file_size))

    env = {**os.environ, "COLUMNS": "1000", "OMP_NUM_THREADS": "1"}
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, env=env, timeout=600,
                          preexec_fn=limit if limit_file_size is not None else None)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` with its SHA-256 (the lock file excepted: it is never rewritten)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".state.lock"}


def leftovers(folder: Path) -> list[str]:
    """Temporary files of the atomic writer, or a spool, left behind."""
    return [str(p) for p in folder.rglob("*") if p.name.endswith((".tmp", ".spool.tsv"))]


# ---------------------------------------------------------------- the table

@dataclass
class Env:
    """What a case's setup may use: its own folder, the demo models and the complete run."""

    root: Path
    models: Path
    complete: Path | None = None  # workdir of the complete run
    complete_list: Path | None = None  # its inputs list

    def write(self, name: str, data: bytes | str) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    def listing(self, *lines: str | Path, name: str = "inputs.txt") -> Path:
        return self.write(name, "".join(f"{line}\n" for line in lines))

    def fresh(self) -> Path:
        return self.root / "workdir"

    def models_args(self) -> list[str]:
        return ["--models", str(self.models)]


@dataclass
class Call:
    """What a case runs: `run` arguments and what the one-line error must name; accepted cases
    give lines for the complete run's inputs list instead."""

    args: list = field(default_factory=list)
    names: str = ""
    list_lines: list = field(default_factory=list)
    limit_file_size: int | None = None


@dataclass(frozen=True)
class Case:
    name: str
    setup: Callable[[Env], Call]
    expected: str  # fragment of the error line (accepted cases: of the run's stderr, may be "")
    accepted: bool = False
    check: Callable[[Path, Path], None] | None = None  # accepted cases: check(workdir, input folder)


def fasta(*records: tuple[str, str]) -> str:
    return "".join(f">{name}\n{seq}\n" for name, seq in records)


def on_complete_run(env: Env, inputs: Path, names) -> Call:
    """A plan-time error aimed at the complete run's workdir: nothing there may change."""
    return Call(["run", inputs, "--workdir", env.complete, *env.models_args()], str(names))


def fresh_run(env: Env, inputs: Path, names, *extra) -> Call:
    return Call(["run", inputs, "--workdir", env.fresh(), *env.models_args(), *extra], str(names))


def bad_file(name: str, data: bytes | str) -> Callable[[Env], Call]:
    """A single bad input file, refused when the run is planned."""
    def setup(env: Env) -> Call:
        path = env.write(name, data)
        return on_complete_run(env, env.listing(path), path)
    return setup


def bad_record(record: str, data: str) -> Callable[[Env], Call]:
    """A file whose problem shows only when it is read in full (the prepare stage)."""
    def setup(env: Env) -> Call:
        path = env.write("reads.fa", data)
        return fresh_run(env, env.listing(path), f"'{record}'")
    return setup


def missing_input(env: Env) -> Call:
    return on_complete_run(env, env.listing(env.root / "nope.fa"), env.root / "nope.fa")


def missing_list(env: Env) -> Call:
    return on_complete_run(env, env.root / "no-such-list.txt", env.root / "no-such-list.txt")


def directory_input(env: Env) -> Call:
    (env.root / "folder.fa").mkdir()
    return on_complete_run(env, env.listing(env.root / "folder.fa"), env.root / "folder.fa")


def unreadable_input(env: Env) -> Call:
    """A file that fails to read even for root: /proc/self/mem at offset 0 (EIO); or, for other
    users, a file without read permission."""
    path = env.root / "reads.fa"
    if os.geteuid() == 0:
        try:
            with open("/proc/self/mem", "rb") as handle:
                handle.read(16)
            pytest.skip("/proc/self/mem is readable here: no file fails to read for root")
        except OSError:
            pass
        path.symlink_to("/proc/self/mem")
    else:
        env.write("reads.fa", fasta(("r", CODING)))
        path.chmod(0)
    return on_complete_run(env, env.listing(path), path)


def truncated_gz(env: Env) -> Call:
    data = gzip.compress(fasta(*((f"r{i}", CODING) for i in range(400))).encode())
    path = env.write("reads.fa.gz", data[: len(data) * 2 // 3])
    return fresh_run(env, env.listing(path), path)


def empty_list(env: Env) -> Call:
    listing = env.listing("# only a comment", "", "   ")
    return on_complete_run(env, listing, listing)


def list_is_fasta(env: Env) -> Call:
    path = env.write("reads.fa", fasta(("r", CODING)))
    return on_complete_run(env, path, path)


def broken_symlink(env: Env) -> Call:
    (env.root / "gone.fa").symlink_to(env.root / "moved-away.fa")
    return on_complete_run(env, env.listing(env.root / "gone.fa"), env.root / "gone.fa")


def workdir_under_file(env: Env) -> Call:
    blocker = env.write("a-file", "not a folder\n")
    workdir = blocker / "workdir"
    return Call(["run", env.complete_list, "--workdir", workdir, *env.models_args()], str(workdir))


def workdir_is_file(env: Env) -> Call:
    blocker = env.write("a-file", "not a folder\n")
    return Call(["run", env.complete_list, "--workdir", blocker, *env.models_args()], str(blocker))


def different_run(env: Env) -> Call:
    path = env.write("other.fa", fasta(("other", CODING)))
    return Call(["run", env.listing(path), "--workdir", env.complete, *env.models_args()], str(env.complete))


def disk_full(env: Env) -> Call:
    """Re-running the complete run rewrites run.json: with a 512-byte file-size limit (the holder
    record .writer.json, written first, fits; run.json does not) that write
    fails half-way; the complete run.json (and everything else) must survive."""
    call = Call(["run", env.complete_list, "--workdir", env.complete, *env.models_args()],
                str(env.complete / "run.json"), limit_file_size=512)
    return call


def long_header(env: Env) -> Call:
    path = env.write("reads.fa", fasta(("ok", CODING), ("x" * 20_000, CODING)))
    return fresh_run(env, env.listing(path), f"{path}: line 3")


def long_record(env: Env) -> Call:
    from virnucpro.fasta import MAX_RECORD_BYTES

    path = env.root / "genome.fa.gz"
    line = b"ACGT" * 15 + b"\n"
    with gzip.open(path, "wb", compresslevel=1) as out:
        out.write(f">ok\n{CODING}\n>chr1 a whole chromosome\n".encode() + line * (MAX_RECORD_BYTES // len(line) + 1))
    return fresh_run(env, env.listing(path), f"{path}: line 3: record 'chr1'")


def fifo_input(env: Env) -> Call:
    path = env.root / "reads.fa"
    os.mkfifo(path)
    return on_complete_run(env, env.listing(path), path)


def symlink_loop(env: Env) -> Call:
    (env.root / "a.fa").symlink_to(env.root / "b.fa")
    (env.root / "b.fa").symlink_to(env.root / "a.fa")
    return on_complete_run(env, env.listing(env.root / "a.fa"), env.root / "a.fa")


def with_classifier(make: Callable[[Env], Path]) -> Callable[[Env], Call]:
    def setup(env: Env) -> Call:
        classifier = make(env)
        return fresh_run(env, env.complete_list, classifier, "--classifier", classifier)
    return setup


def text_classifier(env: Env) -> Path:
    return env.write("500_model.pth", "this is not a model\n")


def esm_as_classifier(env: Env) -> Path:
    return env.models / "esm2_t2_demo.pt"  # a real PyTorch file, but an ESM-2 checkpoint


def wrong_width_classifier(env: Env) -> Path:
    import torch

    from virnucpro.engines.classifier import MLPClassifier

    path = env.root / "500_model.pth"
    torch.save(MLPClassifier(100, 8, 2).state_dict(), path)  # the demo models give 32 + 64 = 96
    return path


def expanded_classifier(env: Env) -> Path:
    import torch

    from virnucpro.engines.classifier import MLPClassifier

    state = MLPClassifier(96, 8, 2).state_dict()
    wide = 10 ** 6  # a 4 kB file that would build a classifier 10^6 wide
    state.update({k: v.flatten()[:1].expand(wide) for k, v in state.items() if k.startswith("bn1.") and v.dim()})
    state.update({"hidden_layer.weight": torch.zeros(1, 1).expand(wide, 96), "hidden_layer.bias": torch.zeros(1).expand(wide),
                  "output_layer.weight": torch.zeros(1, 1).expand(2, wide)})
    path = env.root / "500_model.pth"
    torch.save(state, path)
    return path


def esm_without_heads(env: Env) -> Call:
    import argparse

    import torch

    with torch.serialization.safe_globals([argparse.Namespace]):
        data = torch.load(env.models / "esm2_t2_demo.pt", weights_only=True)
    data["cfg"]["model"].encoder_attention_heads = 0
    path = env.root / "esm2_t2_noheads.pt"
    torch.save(data, path)
    return fresh_run(env, env.complete_list, path, "--esm-model", path)


def deep_dnabert_config(env: Env) -> Call:
    folder = env.root / "dnabert"
    shutil.copytree(env.models / "dnabert-s-demo", folder)
    (folder / "config.json").write_text('{"a": ' * 100_000 + "1" + "}" * 100_000)  # RecursionError in json
    return fresh_run(env, env.complete_list, folder / "config.json", "--dnabert-model", folder)


def bad_esm(env: Env) -> Call:
    path = env.write("esm2_t2_broken.pt", b"PK\x03\x04 not really a checkpoint")
    return fresh_run(env, env.complete_list, path, "--esm-model", path)


# accepted inputs: each writes its files and gives its lines of the complete run's inputs list

def accepted(name: str, records: str | bytes, *extra_lines: str) -> Callable[[Env], Call]:
    def setup(env: Env) -> Call:
        path = env.write(name, records)
        return Call(list_lines=[str(path), *extra_lines])
    return setup


def frames_as_oracle(file_name: str) -> Callable[[Path, Path], None]:
    """The input's frames (ids, nucleotides, proteins) are those of the codon-by-codon reference."""
    def check(workdir: Path, folder: Path) -> None:
        expected = [f"{f.frame_id}\t{f.nucleotide}\t{f.protein}"
                    for read in read_fasta(folder / file_name) for f in frames_of_read(read, 500)]
        assert expected, "the case must produce frames to be meaningful"
        assert frames_of_input(workdir, file_name) == expected
    return check


def frames_of_input(workdir: Path, file_name: str) -> list[str]:
    import json

    index = json.loads((workdir / "run.json").read_text())["inputs"].index(str(workdir.parent / "inputs" / file_name))
    lines = []
    for shard in sorted((workdir / "shards").glob("*.frames.tsv")):
        for line in shard.read_text(encoding="utf-8").splitlines()[1:]:
            fields = line.split("\t")
            if int(fields[0]) == index:
                lines.append("\t".join(fields[3:]))
    return lines


def result_lines(workdir: Path, input_name: str, file: str = "reads.tsv") -> list[str]:
    return (workdir / "results" / input_name / file).read_text(encoding="utf-8").splitlines()


def check_case_insensitive(workdir: Path, folder: Path) -> None:
    frames = frames_of_input(workdir, "mixed-case.fa")
    by_read = {}
    for line in frames:
        frame_id, nucleotide, protein = line.split("\t")
        read, suffix = frame_id.split("_chunk_")
        by_read.setdefault(read, []).append((suffix, nucleotide, protein))
    assert by_read["upper"] and by_read["upper"] == by_read["lower"] == by_read["mixed"]
    assert all(n == n.upper() for _, n, _ in by_read["lower"])


def check_crlf(workdir: Path, folder: Path) -> None:
    frames_as_oracle("crlf.fa")(workdir, folder)
    assert b"\r" not in b"".join(p.read_bytes() for p in (workdir / "results").rglob("*") if p.is_file())


def check_latin1_header(workdir: Path, folder: Path) -> None:
    assert "caf\u00e9_read" in [line.split("\t")[0] for line in result_lines(workdir, "latin1-header")]


def check_short_records(workdir: Path, folder: Path) -> None:
    rows = {line.split("\t")[0]: line.split("\t") for line in result_lines(workdir, "short-records")}
    assert rows["header_only"][1:4] == ["0", "1", "0"] and rows["header_only"][6] == "no_frames"
    assert rows["two_bases"][1:4] == ["2", "1", "0"]
    assert int(rows["long_enough"][3]) > 0


def check_colliding_ids(workdir: Path, folder: Path) -> None:
    first = {line.split("\t")[0]: line for line in result_lines(workdir, "same-ids-1")}
    second = {line.split("\t")[0]: line for line in result_lines(workdir, "same-ids-2")}
    assert first["shared_id"].split("\t")[1] == str(len(CODING))  # each keeps its own read
    assert second["shared_id"].split("\t")[1] == str(len(CODING) + 30)


def check_listing(workdir: Path, folder: Path) -> None:
    import json

    inputs = json.loads((workdir / "run.json").read_text())["inputs"]
    assert len(inputs) == len(set(inputs))
    assert sum(p.endswith("listed-twice.fa") for p in inputs) == 1


def check_quoted_path(workdir: Path, folder: Path) -> None:
    assert (workdir / "results" / "it_s__quoted_" / "prediction_results.txt").is_file()
    frames_as_oracle("it's \"quoted\".fa")(workdir, folder)


def check_rna(workdir: Path, folder: Path) -> None:
    rna, dna = frames_of_input(workdir, "rna.fa"), frames_of_input(workdir, "rna-as-dna.fa")
    assert rna and rna == dna and "U" not in "".join(line.split("\t")[1] for line in rna).upper()


def check_gzip(workdir: Path, folder: Path) -> None:
    assert result_lines(workdir, "gzipped")[1:]


CASES = [
    # ---- the inputs list and the files it names (refused when the run is planned)
    Case("missing input file", missing_input, "input file not found"),
    Case("missing inputs list", missing_list, "inputs list not found"),
    Case("inputs list empty (comments and blank lines only)", empty_list, "names no files"),
    Case("FASTA given instead of an inputs list", list_is_fasta, "not an inputs list"),
    Case("input is a directory", directory_input, "is a directory"),
    Case("input is a broken symlink", broken_symlink, "broken symbolic link"),
    Case("unreadable input file", unreadable_input, "cannot read the file"),
    Case("empty input file", bad_file("empty.fa", b""), "the file is empty"),
    Case("FASTQ input", bad_file("reads.fq", "@r1\nACGT\n+\nIIII\n"), "looks like FASTQ"),
    Case("HTML input", bad_file("reads.fa", "<!DOCTYPE html>\n<html><body>Not Found</body></html>\n"),
         "looks like HTML"),
    Case("binary input", bad_file("reads.fa", bytes(range(256)) * 4), "binary data"),
    Case("input is a FIFO", fifo_input, "is not a regular file (a FIFO)"),
    Case("input is a symbolic link loop", symlink_loop, "is a symbolic link loop"),
    Case("sequence before any header", bad_file("reads.fa", "ACGT\n>r\nACGT\n"), "does not start with a '>' header"),
    # ---- problems found while reading the whole file (prepare stage, fresh workdir)
    Case("truncated gzip", truncated_gz, "truncated or corrupt"),
    Case("duplicate read ids in a file", bad_record("r1", fasta(("r1", CODING), ("r2", CODING), ("r1", "ACGT"))),
         "duplicate read id"),
    Case("gap '-' in a sequence", bad_record("gapped", fasta(("ok", CODING), ("gapped", "ACG-TACG"))), "remove gaps"),
    Case("stop '*' in a sequence", bad_record("starred", fasta(("starred", "ACGT*"))),
         "not IUPAC nucleotide codes ('*')"),
    Case("digits in a sequence", bad_record("numbered", fasta(("numbered", "ACGT12ACGT"))), "codes ('1', '2')"),
    Case("space inside a sequence", bad_record("spaced", fasta(("spaced", "ACGT ACGT"))),
         "not IUPAC nucleotide codes (' ')"),
    Case("header longer than 10,000 characters", long_header, "longer than 10,000 characters (the limit)"),
    Case("record longer than 32 MB (e.g. a whole chromosome)", long_record, "is longer than 32,000,000 bytes (the limit"),
    # ---- the workdir
    Case("workdir under a regular file", workdir_under_file, "cannot create the workdir"),
    Case("workdir is a regular file", workdir_is_file, "cannot create the workdir"),
    Case("workdir of a different run", different_run, "holds a run with different inputs changed"),
    Case("disk full while writing (file-size limit)", disk_full, "while writing it; free space"),
    # ---- models (checked before the first GPU stage)
    Case("classifier that is not a PyTorch file", with_classifier(text_classifier), "not a readable PyTorch file"),
    Case("PyTorch file that is not a classifier", with_classifier(esm_as_classifier), "wrong structure"),
    Case("classifier of the wrong width", with_classifier(wrong_width_classifier),
         "takes 100 features but DNABERT-S"),
    Case("ESM-2 file that is not a checkpoint", bad_esm, "not a readable ESM-2 checkpoint"),
    Case("classifier of expanded (stride 0) tensors", with_classifier(expanded_classifier),
         "hidden_layer.weight of shape (1000000, 96) is expanded"),
    Case("ESM-2 checkpoint with 0 attention heads", esm_without_heads, "cfg encoder_attention_heads is 0"),
    Case("DNABERT-S config.json nested 100,000 deep", deep_dnabert_config, "not a readable JSON file"),
    # ---- odd but valid input: accepted, all in the one complete run
    Case("lowercase and mixed case", accepted("mixed-case.fa", fasta(
        ("upper", CODING), ("lower", CODING.lower()),
        ("mixed", "".join(c.lower() if i % 2 else c for i, c in enumerate(CODING))))),
         "", True, check_case_insensitive),
    Case("IUPAC codes (codons holding them are dropped)", accepted("iupac.fa", fasta(
        ("ambiguous", CODING[:30] + "NRYKMSWBDHV" + CODING[30:]), ("n_run", "ATGNNNGCT" + CODING))), "", True,
         frames_as_oracle("iupac.fa")),
    Case("CRLF line endings", accepted("crlf.fa", fasta(("w1", CODING[:60]), ("w2", CODING)).replace("\n", "\r\n")),
         "", True, check_crlf),
    Case("non-UTF-8 header (read as Latin-1)",
         accepted("latin1-header.fa", b">caf\xe9_read d\xe9j\xe0\n" + CODING.encode() + b"\n"),
         "", True, check_latin1_header),
    Case("header-only records and reads shorter than one codon", accepted("short-records.fa", fasta(
        ("header_only", ""), ("two_bases", "AC"), ("long_enough", CODING))),
         "skipped 2 read(s) shorter than one codon (1 with no sequence at all)", True, check_short_records),
    Case("the same read id in two files", lambda env: Call(list_lines=[
        *accepted("same-ids-1.fa", fasta(("shared_id", CODING)))(env).list_lines,
        *accepted("same-ids-2.fa", fasta(("shared_id", CODING + "GCT" * 10)))(env).list_lines]), "", True,
         check_colliding_ids),
    Case("inputs list with comments, blank lines and duplicates", accepted(
        "listed-twice.fa", fasta(("twice", CODING)), "# a comment", "", "   ", "listed-twice.fa   # relative, again"),
         "", True, check_listing),
    Case("paths with spaces and quotes", accepted("it's \"quoted\".fa", fasta(("q", CODING))), "", True,
         check_quoted_path),
    Case("RNA (U read as T, one warning per file)", lambda env: Call(list_lines=[
        *accepted("rna.fa", fasta(("r1", CODING.replace("T", "U")), ("r2", CODING.replace("T", "u").lower()),
                                  ("r3", CODING)))(env).list_lines,
        *accepted("rna-as-dna.fa", fasta(("r1", CODING), ("r2", CODING.lower()), ("r3", CODING)))(env).list_lines]),
         "rna.fa: 2 record(s) are RNA (hold U); read as DNA with U as T", True, check_rna),
    Case("'#' inside a file name is part of it", accepted("run#1.fa", fasta(("hash", CODING))), "", True,
         frames_as_oracle("run#1.fa")),
    Case("gzipped input", accepted("gzipped.fa.gz", gzip.compress(fasta(("gz", CODING)).encode())), "", True,
         check_gzip),
]


# ---------------------------------------------------------------- running the table

@dataclass
class CompleteRun:
    workdir: Path
    inputs_list: Path
    inputs: Path  # the folder of the accepted inputs
    result: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def complete_run(tmp_path_factory, demo_models) -> CompleteRun:
    """One run of every accepted case's input, from a folder whose path has spaces and quotes."""
    root = tmp_path_factory.mktemp("complete") / "a folder with spaces and 'quotes'"
    env = Env(root / "inputs", demo_models)
    lines = [line for case in CASES if case.accepted for line in case.setup(env).list_lines]
    listing = env.listing(*lines, name="inputs list.txt")
    workdir = root / "workdir"
    result = run_cli("run", listing, "--workdir", workdir, "--models", demo_models, "--shards", "2")
    return CompleteRun(workdir, listing, env.root, result)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_input_case(case: Case, complete_run: CompleteRun, demo_models: Path, tmp_path: Path):
    assert complete_run.result.returncode == 0, complete_run.result.stderr
    if case.accepted:
        assert case.expected in complete_run.result.stderr
        case.check(complete_run.workdir, complete_run.inputs)
        return
    before = snapshot(complete_run.workdir)
    env = Env(tmp_path / "case", demo_models, complete_run.workdir, complete_run.inputs_list)
    env.root.mkdir()
    call = case.setup(env)
    done = run_cli(*call.args, limit_file_size=call.limit_file_size)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr + done.stdout
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert call.names in errors[0], errors[0]
    assert case.expected in errors[0], errors[0]
    # nothing already written changed, nothing partial left behind, no results from a failed run
    assert snapshot(complete_run.workdir) == before
    assert leftovers(complete_run.workdir.parent) == [] and leftovers(env.root) == []
    assert not (env.fresh() / "results").exists() and not (env.fresh() / "shards").exists()


def test_a_fixed_input_runs_in_the_same_workdir(tmp_path, demo_models):
    """After prepare refused an input, fixing the file and re-running must not be refused as a
    'different run' (nothing was done yet); once a stage is done, a changed input is refused."""
    from virnucpro.errors import StateError
    from virnucpro.orchestration.plan import RunRequest, plan_run

    path = tmp_path / "reads.fa"
    path.write_text(fasta(("r", "ACGT-ACGT")))
    listing = tmp_path / "inputs.txt"
    listing.write_text(f"{path}\n")
    request = RunRequest(inputs_list=listing, workdir=tmp_path / "w", models_dir=demo_models)
    _, _, state = plan_run(request)
    state.mark_running("prepare", 0)
    state.mark_failed("prepare", 0, "bad character")
    path.write_text(fasta(("r", CODING)))
    _, config, state = plan_run(request)  # re-planned for the fixed file
    assert config.fingerprint["inputs"][0]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    state.mark_running("prepare", 0)
    state.mark_done("prepare", 0)
    path.write_text(fasta(("r", CODING + "GCT")))
    with pytest.raises(StateError, match="different inputs changed"):
        plan_run(request)


def test_disk_full_keeps_the_previous_file(tmp_path):
    """A real full disk (a 64 KiB tmpfs) when mounting is allowed: the rewrite fails with ENOSPC,
    the complete file survives and no temporary file is left."""
    from virnucpro.atomic import atomic_write_text
    from virnucpro.errors import OutputError

    mount = tmp_path / "tiny"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here; the file-size-limit case in the table covers a failed write")
    try:
        target = mount / "prediction_results.txt"
        atomic_write_text(target, "complete\n" * 4000)  # 36 KB: a second copy does not fit
        with pytest.raises(OutputError) as failure:
            atomic_write_text(target, "replacement\n" * 4000)
        assert str(target) in str(failure.value) and "No space left on device" in str(failure.value)
        assert target.read_text() == "complete\n" * 4000
        assert sorted(p.name for p in mount.iterdir()) == ["prediction_results.txt"]
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_prepare_failing_mid_write_keeps_previous_shards(tmp_path, monkeypatch):
    """ENOSPC in the middle of the prepare stage's writes (simulated in-process): the shards of
    the previous complete prepare stay byte-identical, and nothing temporary is left."""
    import virnucpro.stages.prepare as prepare
    from virnucpro.errors import OutputError
    from virnucpro.orchestration.config import ModelSpec, RunConfig
    from virnucpro.orchestration.runner import StageContext
    from virnucpro.paths import Workdir

    reads = tmp_path / "reads.fa"
    reads.write_text(fasta(*((f"r{i}", CODING + "GCT" * i) for i in range(200))))
    config = RunConfig(inputs_list="", inputs=[str(reads)], input_names=["reads"], chunk_length=500, shards=3,
                       models=ModelSpec("esm", "dnabert", "classifier"))
    ctx = StageContext(workdir=Workdir(tmp_path / "w"), config=config)
    prepare.prepare(ctx)
    before = snapshot(ctx.workdir.root)

    real_open = prepare.atomic_open
    written = {"bytes": 0}

    class FillingHandle:
        def __init__(self, handle):
            self.handle = handle

        def write(self, text):
            written["bytes"] += len(text)
            if written["bytes"] > 20_000:
                raise OSError(28, "No space left on device")
            return self.handle.write(text)

        def writelines(self, lines):
            for line in lines:
                self.write(line)

    import contextlib

    @contextlib.contextmanager
    def filling_open(path, *args, **kwargs):
        with real_open(path, *args, **kwargs) as handle:
            yield FillingHandle(handle)

    monkeypatch.setattr(prepare, "atomic_open", filling_open)
    with pytest.raises(OutputError, match="No space left on device while writing it"):
        prepare.prepare(ctx)
    after = snapshot(ctx.workdir.root)
    assert {k: v for k, v in after.items() if k.startswith(("shards", "prepare/summary"))} == \
        {k: v for k, v in before.items() if k.startswith(("shards", "prepare/summary"))}
    assert leftovers(ctx.workdir.root) == []


@pytest.mark.parametrize("layout", ["UTF-8 BOM", "CRLF", "comments"])
def test_inputs_list_layouts(tmp_path, layout):
    """Item 10: a BOM made the first path "\ufeffreads.fa" (not found); '#' anywhere started a
    comment, so run#1.fa was silently read as run."""
    from virnucpro.fasta import read_inputs_list

    for name in ("reads.fa", "run#1.fa", "run"):
        (tmp_path / name).write_text(fasta((name, CODING)))
    lines = {"UTF-8 BOM": "\ufeffreads.fa\nrun#1.fa\n", "CRLF": "reads.fa\r\nrun#1.fa\r\n",
             "comments": "# a comment\n  # indented comment\nreads.fa  # after whitespace\nrun#1.fa\t# tab\n"}[layout]
    listing = tmp_path / "inputs.txt"
    listing.write_bytes(lines.encode("utf-8"))
    assert read_inputs_list(listing) == [tmp_path / "reads.fa", tmp_path / "run#1.fa"]



def refused_reading(path):
    """(the InputError reading `path` raised, the peak of traced memory until then)."""
    import tracemalloc

    from virnucpro.errors import InputError
    from virnucpro.fasta import read_records

    tracemalloc.start()
    try:
        with pytest.raises(InputError) as refused:
            list(read_records(path))
        return refused, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_huge_header_fails_before_it_is_read_into_memory(tmp_path):
    """Item 10: a 200 MB id took 8.8 GB of memory and 7.1 GB of disk; now the reader stops once the
    header line passes the limit (here 64 MB of header, gzipped, must fail within a few MB)."""
    path = tmp_path / "huge.fa.gz"
    with gzip.open(path, "wb", compresslevel=1) as out:
        out.write(f">ok\n{CODING}\n>".encode())
        for _ in range(64):
            out.write(b"x" * (1 << 20))
        out.write(f"\n{CODING}\n".encode())
    refused, peak = refused_reading(path)
    assert f"{path}: line 3: the header of record 'xxxx" in str(refused.value)
    assert "longer than 10,000 characters" in str(refused.value)
    assert peak < 32 << 20, peak


def test_a_huge_record_fails_before_it_is_read_into_memory(tmp_path):
    """Issue 25: one 500 Mbp read from a 1.7 MB .gz took 7.8 GB in prepare; the reader now stops
    once a record passes MAX_RECORD_BYTES (here a 64 MB record must fail within ~40 MB)."""
    from virnucpro.fasta import MAX_RECORD_BYTES

    path = tmp_path / "huge.fa.gz"
    with gzip.open(path, "wb", compresslevel=1) as out:
        out.write(f">ok\n{CODING}\n>big one\n".encode())
        for _ in range(64):
            out.write((b"ACGT" * 255 + b"\n") * 1028)
        out.write(f">after\n{CODING}\n".encode())
    refused, peak = refused_reading(path)
    assert str(refused.value).startswith(f"{path}: line 3: record 'big' is longer than {MAX_RECORD_BYTES:,} bytes")
    assert peak < MAX_RECORD_BYTES + (16 << 20), peak


def test_rna_reads_translate_like_dna(tmp_path, capsys):
    """Item 10: U was a valid letter but unknown to the codon rule, so AUG... gave other proteins than
    ATG...; one reader converts it for prepare, `translate` and `embed dnabert` alike."""
    from virnucpro.cli import main
    from virnucpro.fasta import read_records

    dna, rna = tmp_path / "dna.fa", tmp_path / "rna.fa"
    dna.write_text(fasta(("r1", CODING), ("r2", CODING.lower())))
    rna.write_text(fasta(("r1", CODING.replace("T", "U")), ("r2", CODING.lower().replace("t", "u"))))
    assert list(read_records(rna)) == list(read_records(dna))
    capsys.readouterr()
    outputs = {}
    for path in (dna, rna):
        nucleotides, proteins = tmp_path / f"{path.stem}.nt.fa", tmp_path / f"{path.stem}.faa"
        assert main(["translate", str(path), "--chunk-length", "500", "--nucleotide-out", str(nucleotides),
                     "--protein-out", str(proteins)]) == 0
        outputs[path.stem] = (nucleotides.read_text(), proteins.read_text())
    assert outputs["rna"] == outputs["dna"] and outputs["dna"][1].startswith(">r1_chunk_1F1\nMAEKLAEKL")
    err = "".join(capsys.readouterr().err.split())  # the console wraps long lines
    assert err.count("areRNA") == 1 and f"{rna}:2record(s)areRNA(holdU)" in err, err


def test_rna_in_prepare_workers_is_converted_and_warned_once(tmp_path, monkeypatch, capsys):
    """The conversion lives in parse_block, so prepare's worker processes do it too, and the count
    of RNA records travels back to one warning per input file however many blocks it spans."""
    import virnucpro.stages.prepare as prepare
    from virnucpro.orchestration.config import ModelSpec, RunConfig
    from virnucpro.orchestration.runner import StageContext
    from virnucpro.paths import Workdir

    records = [(f"r{i}", CODING + "GCT" * i) for i in range(300)]
    dna, rna = tmp_path / "dna.fa", tmp_path / "rna.fa"
    dna.write_text(fasta(*records))
    rna.write_text(fasta(*((name, seq.replace("T", "U")) if i % 3 else (name, seq)
                           for i, (name, seq) in enumerate(records))))
    monkeypatch.setattr(prepare, "BLOCK_BYTES", 5000)  # many blocks, spread over the workers
    monkeypatch.setenv("VIRNUCPRO_PREPARE_WORKERS", "2")
    shards = {}
    for path in (dna, rna):
        config = RunConfig(inputs_list="", inputs=[str(path)], input_names=[path.stem], chunk_length=500, shards=2,
                           models=ModelSpec("esm", "dnabert", "classifier"))
        ctx = StageContext(workdir=Workdir(tmp_path / path.stem), config=config)
        prepare.prepare(ctx)
        shards[path.stem] = [ctx.workdir.shard_frames(k).read_text() for k in range(2)]
    assert shards["rna"] == shards["dna"]
    err = "".join(capsys.readouterr().err.split())
    assert err.count("areRNA") == 1 and f"{rna}:200record(s)areRNA" in err, err
