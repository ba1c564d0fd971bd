"""Training and evaluation runs through the one stage table: LABELS files, the stages of each run
kind, GenBank frame selection, the classifier check before any work, the evaluation's scores,
reuse of a workdir's embeddings and the SLURM graph of a training."""

import gzip
import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from virnucpro import pipeline
from virnucpro.errors import InputError, VirnucproError
from virnucpro.holdout import sequence_key
from virnucpro.orchestration.config import ModelSpec, RunConfig
from virnucpro.orchestration.labels import read_labels
from virnucpro.modelstore.resolve import check_classifier_widths
from virnucpro.orchestration.plan import RunRequest, new_config, plan_run
from virnucpro.orchestration.state import DONE
from virnucpro.paths import Workdir
from virnucpro.storage import read_shard_frames

EXAMPLE = Path(__file__).resolve().parents[1] / "virnucpro" / "data" / "example"


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "virnucpro.cli", *args], capture_output=True, text=True, timeout=timeout)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def two_fastas(tmp_path) -> Path:
    """tmp/data/{a,b}.fa: copies of the bundled example reads."""
    for name, source in (("a.fa", "sample_a.fasta"), ("b.fa", "sample_b.fasta")):
        write(tmp_path / "data" / name, (EXAMPLE / source).read_text())
    return tmp_path / "data"


# ---------------------------------------------------------------- LABELS files

def test_labels_file_paths_comments_columns_and_duplicates(tmp_path, two_fastas):
    genbank = write(two_fastas / "a.gbff", "LOCUS x\n//\n")
    labels = write(tmp_path / "lists" / "labels.tsv",
                   "# training set\n"
                   "../data/a.fa\tvirus\t../data/a.gbff   # with its annotation\n"
                   "../data/b.fa   Other\n"  # spaces instead of a tab; the label's case does not matter
                   "\n"
                   f"{two_fastas / 'b.fa'}\tother\n")  # the same file again, same label: one input
    got = read_labels(labels, need_both_classes=True)
    assert got.inputs == [two_fastas / "a.fa", two_fastas / "b.fa"]
    assert got.labels == ["virus", "other"]
    assert got.genbank == [genbank, None]


BAD_LABELS = [
    ("a.fa\tviral\n", "label 'viral' is neither 'virus' nor 'other'"),
    ("a.fa\n", "expected 'FASTA<TAB>virus|other[<TAB>GenBank]', found 1 column"),
    ("a.fa\tvirus\ta.gbff\textra\n", "found 4 column(s)"),
    ("a.fa\tvirus\nb.fa\tother\na.fa\tother\n", "listed twice with two labels (virus and other)"),
    ("a.fa\tvirus\nb.fa\tvirus\n", "every input is labelled 'virus', none 'other'"),
    ("missing.fa\tvirus\nb.fa\tother\n", "input file not found"),
    ("a.fa\tvirus\tmissing.gbff\nb.fa\tother\n", "missing.gbff: input file not found"),
    ("# nothing here\n", "the LABELS file names no files"),
]


@pytest.mark.parametrize("text,message", BAD_LABELS, ids=[m for _, m in BAD_LABELS])
def test_bad_labels_file_is_one_line_naming_file_and_line(tmp_path, two_fastas, text, message):
    labels = write(two_fastas / "labels.tsv", text)
    with pytest.raises(InputError) as error:
        read_labels(labels, need_both_classes=True)
    assert message in str(error.value)
    assert str(two_fastas) in str(error.value) and "\n" not in str(error.value)


def test_one_class_is_enough_to_evaluate(two_fastas):
    labels = write(two_fastas / "labels.tsv", "a.fa\tvirus\nb.fa\tvirus\n")
    assert read_labels(labels).labels == ["virus", "virus"]


def test_train_refuses_a_bad_labels_file_before_writing_anything(tmp_path, two_fastas, demo_models):
    labels = write(two_fastas / "labels.tsv", "a.fa\tvirus\nb.fa\tvirus\n")
    done = cli("train", str(labels), "--workdir", str(tmp_path / "T"), "--models", str(demo_models), "--device", "cpu")
    assert done.returncode != 0
    assert "none 'other'" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "T").exists()


# ---------------------------------------------------------------- the stages of each kind

def config_of(kind: str, shards: int = 2, device: str = "cpu") -> RunConfig:
    return RunConfig(inputs_list="x", inputs=["a.fa", "b.fa"], input_names=["a", "b"], chunk_length=150, shards=shards,
                     models=ModelSpec(esm="e", dnabert="d", classifier="" if kind == "train" else "c.pth"),
                     kind=kind, labels=["virus", "other"], genbank=[None, None], device=device)


def test_each_kind_plans_its_own_stages_from_the_one_table():
    todo = {kind: list(pipeline.plan(config_of(kind), {}).todo) for kind in pipeline.KINDS}
    assert todo["predict"] == ["prepare", "dnabert", "esm2", "predict", "consensus"]
    assert todo["train"] == ["prepare", "dnabert", "esm2", "train"]
    assert todo["evaluate"] == ["prepare", "dnabert", "esm2", "predict", "consensus", "evaluate"]
    assert pipeline.shard_counts(config_of("train")) == {"prepare": 1, "dnabert": 2, "esm2": 2, "train": 1}


def test_recompute_rule_within_a_kind():
    evaluation = config_of("evaluate")
    assert pipeline.dependents("esm2", 1, evaluation) == [("esm2", 1), ("predict", 1), ("consensus", 0), ("evaluate", 0)]
    # a finished training is not retrained for an embedding shard healed after it (same numbers)
    assert pipeline.dependents("esm2", 1, config_of("train")) == [("esm2", 1)]
    assert pipeline.downstream("predict", evaluation) == ["predict", "consensus", "evaluate"]
    assert pipeline.downstream("predict", config_of("train")) == []


def test_options_of_a_kind_redo_only_their_stage():
    before = config_of("train")
    assert pipeline.reset_by_options(before, replace(before, holdout=0.2)) == ["train"]
    evaluation = config_of("evaluate")
    assert pipeline.reset_by_options(evaluation, replace(evaluation, target_fdr=0.01)) == ["evaluate"]
    assert pipeline.reset_by_options(evaluation, replace(evaluation, min_score=0.9)) == ["consensus"]


def test_status_counts_only_the_stages_of_the_run(tmp_path):
    from virnucpro.orchestration.status import status_report

    workdir = Workdir(tmp_path / "T")
    config = config_of("train")
    from virnucpro.orchestration.state import StateFile
    state = StateFile(workdir.state, workdir.state_lock)
    workdir.root.mkdir()
    state.initialise(pipeline.shard_counts(config))
    for stage, count in pipeline.shard_counts(config_of("predict")).items():  # a prediction ran here before
        for shard in range(count):
            state.mark_done(stage, shard, {})
    report = status_report(workdir, config)
    assert [s["stage"] for s in report["stages"]] == ["prepare", "dnabert", "esm2", "train"]
    assert report["stages"][-1]["shards"] == 1 and not report["complete"]


# ---------------------------------------------------------------- GenBank frame selection

def write_genbank(path: Path, records: list[tuple[str, str, list[tuple[int, int, int]]]]) -> None:
    """A GenBank file of (id, sequence, [(start, end, strand) of each CDS]) written by Biopython,
    each CDS with its translation qualifier."""
    from Bio import SeqIO
    from Bio.Seq import Seq
    from Bio.SeqFeature import FeatureLocation, SeqFeature
    from Bio.SeqRecord import SeqRecord

    out = []
    for record_id, sequence, cds in records:
        record = SeqRecord(Seq(sequence), id=record_id, name=record_id[:10], description="synthetic",
                           annotations={"molecule_type": "DNA"})
        for start, end, strand in cds:
            location = FeatureLocation(start, end, strand=strand)
            protein = str(location.extract(record.seq).translate(to_stop=True))
            record.features.append(SeqFeature(location, type="CDS", qualifiers={"translation": [protein]}))
        out.append(record)
    with gzip.open(path, "wt") if path.name.endswith(".gz") else open(path, "w") as handle:
        SeqIO.write(out, handle, "genbank")


def stop_free_orf(rng, codons: int) -> str:
    """ATG + random sense codons (no stop in the forward frame)."""
    sense = [a + b + c for a in "ACGT" for b in "ACGT" for c in "ACGT" if a + b + c not in ("TAA", "TAG", "TGA")]
    return "ATG" + "".join(rng.choice(sense, codons - 1))


def test_genbank_mode_keeps_only_frames_inside_an_annotated_cds(tmp_path):
    from virnucpro.fasta import Block
    from virnucpro.sequences import translate_stream
    from virnucpro.stages.prepare import prepare_block

    rng = np.random.default_rng(7)
    gene = stop_free_orf(rng, 200)  # 600 nt, annotated on the forward strand
    clean = gene + "TAA" + "".join(rng.choice(list("ACGT"), 297))  # 900 nt: chunks 0-300, 300-600, 600-900
    ambiguous = gene[:150] + "N" + gene[151:]  # same gene, one N: its first chunk is dropped whole
    write_genbank(tmp_path / "g.gbff.gz", [("rec1", clean, [(0, 600, 1)]), ("rec2", ambiguous, [(0, 600, 1)])])
    fasta = write(tmp_path / "g.fa", f">rec1 annotated\n{clean}\n>rec2\n{ambiguous}\n>rec3 not in the GenBank file\n{gene}\n"
                                     ">rec4 neither, and without a stop-free frame\nAC\n")
    block = Block(path=fasta, data=fasta.read_bytes(), first_line=1, is_first=True)

    every = [f for batch in translate_stream([("rec1", clean), ("rec2", ambiguous), ("rec3", gene)], 300)
             for f in zip(batch.frame_ids, batch.proteins)]
    from virnucpro.genbank import build_cds_index

    index = build_cds_index(tmp_path / "g.gbff.gz", tmp_path / "cds.sqlite")  # what prepare's workers are given
    selected = prepare_block((block, 0, 300, str(index), 300))  # a training's, windows of 300
    kept = [line.split("\t") for line in selected.spool.decode().splitlines()]
    kept_ids = [row[3] for row in kept]
    annotated = str(__import__("Bio.Seq", fromlist=["Seq"]).Seq(gene).translate())
    # exactly the stop-free frames whose protein lies inside the CDS translation, not the other stop-free frames
    assert kept_ids == [i for i, p in every if p in annotated and not i.startswith(("rec2_chunk_1", "rec3"))]
    assert "rec1_chunk_1F1" in kept_ids and "rec1_chunk_2F1" in kept_ids and "rec2_chunk_2F1" in kept_ids
    assert len(kept_ids) < len(every)
    assert not any(i.startswith("rec2_chunk_1") for i in kept_ids)  # the chunk with an N
    assert selected.counts["records_not_in_genbank"] == 2 and selected.counts["frames"] == len(kept_ids)
    assert selected.counts["frames_outside_cds"] == len(every) - len(kept_ids)
    # the reads table's frame counts are the kept frames
    reads = {row.split("\t")[0]: int(row.split("\t")[3]) for row in selected.reads.decode().splitlines()}
    assert reads == {r: sum(i.startswith(r + "_") for i in kept_ids) for r in ("rec1", "rec2", "rec3", "rec4")}
    # without the GenBank file every stop-free frame is kept
    assert [line.split("\t")[3] for line in prepare_block((block, 0, 300, None, None)).spool.decode().splitlines()] == \
        [i for i, _ in every]
    # GenBank mode split into windows: one key per kept frame, that of its chunk's 300-base window
    keys = np.frombuffer(selected.split_keys, np.uint64)
    windows = {"rec1": clean, "rec2": ambiguous}
    assert keys.tolist() == [sequence_key(windows[i.split("_chunk_")[0]][300 * (int(i.split("_chunk_")[1][:-2]) - 1):]
                                          [:300]) for i in kept_ids]


def test_a_file_that_is_not_genbank_is_one_line(tmp_path):
    from virnucpro.genbank import build_cds_index

    with pytest.raises(InputError, match="holds no GenBank record"):
        build_cds_index(write(tmp_path / "x.gbff", ">not genbank\nACGT\n"), tmp_path / "cds.sqlite")
    assert not (tmp_path / "cds.sqlite").exists()


# ---------------------------------------------------------------- the classifier check before any work

def test_trained_classifier_of_other_widths_is_refused_naming_both(tmp_path):
    meta = {"chunk_length": 150, "input_widths": {"dnabert": 768, "esm2": 1280},
            "models": {"esm2": {"name": "esm2_t33_650M_UR50D"}}}
    models = ModelSpec(esm="esm2_t36_3B_UR50D", dnabert="zhihan1996/DNABERT-S", classifier="c.safetensors")
    with pytest.raises(InputError) as error:
        check_classifier_widths("c.safetensors", meta, models)
    assert "width 1280 (esm2_t33_650M_UR50D)" in str(error.value) and "esm2_t36_3B_UR50D gives 2560" in str(error.value)
    check_classifier_widths("c.safetensors", meta, replace(models, esm="esm2_t33_650M_UR50D"))  # the same: accepted


def test_chunk_length_of_a_trained_classifier_is_its_own(tmp_path, two_fastas, demo_models, monkeypatch):
    from virnucpro.modelstore import resolve as plan

    classifier = write(tmp_path / "classifier.safetensors", "weights")
    monkeypatch.setattr(plan, "classifier_meta", lambda path: {"chunk_length": 150, "input_widths": {}})
    inputs = write(two_fastas / "inputs.txt", "a.fa\n")
    request = RunRequest(inputs_list=inputs, workdir=tmp_path / "W", models_dir=demo_models, classifier=str(classifier))
    assert new_config(request).chunk_length == 150
    with pytest.raises(InputError, match="--chunk-length 300 does not match the classifier .* trained on 150-bp chunks"):
        new_config(replace(request, chunk_length=300, force_chunk_length=True))


# ---------------------------------------------------------------- evaluation: scores and truth

def test_evaluation_scores_and_calls_are_consensus_and_truth_is_the_label(quiet_demo_run):
    from virnucpro.orchestration.runner import StageContext
    from virnucpro.stages.evaluate import evaluation_levels

    assert quiet_demo_run.returncode == 0, quiet_demo_run.stderr
    workdir = Workdir(quiet_demo_run.workdir)
    config = RunConfig.load(workdir)
    config.kind, config.labels = "evaluate", ["virus", "other"]
    levels = evaluation_levels(StageContext(workdir=workdir, config=config))

    chunks, reads = [], []  # (truth, score, call) from consensus's result files
    for name, label in zip(config.input_names, config.labels):
        frames, highest, reads_table = workdir.result_files(name)[:3]
        per_chunk: dict[str, float] = {}  # in frame order
        for line in frames.read_text().splitlines()[1:]:
            frame_id, _, _, score2 = line.split("\t")
            per_chunk[frame_id[:-2]] = max(per_chunk.get(frame_id[:-2], 0.0), float(score2))
        is_virus = dict(line.split("\t") for line in highest.read_text().splitlines()[1:])
        chunks += [(label == "virus", score, is_virus[chunk] == "True") for chunk, score in per_chunk.items()]
        for row in reads_table.read_text().splitlines()[1:]:
            read_id, _, _, frames_kept, _, score, call, *_ = row.split("\t")
            reads.append((label == "virus", float(score) if frames_kept != "0" else 0.0, call == "virus"))
    assert levels["chunk"].truth.tolist() == [c[0] for c in chunks] and len({c[0] for c in chunks}) == 2
    np.testing.assert_allclose(levels["chunk"].scores, [c[1] for c in chunks], rtol=1e-6)
    assert levels["chunk"].calls.tolist() == [c[2] for c in chunks]
    got = sorted(zip(levels["read"].truth.tolist(), np.round(levels["read"].scores, 6).tolist(), levels["read"].calls.tolist()))
    assert got == sorted((t, round(s, 6), c) for t, s, c in reads)


# ---------------------------------------------------------------- reusing a workdir's embeddings

def test_evaluation_reuses_the_embeddings_of_a_prediction_workdir(tmp_path, quiet_demo_run, demo_models):
    workdir = tmp_path / "W"
    shutil.copytree(quiet_demo_run.workdir, workdir)
    labels = write(tmp_path / "labels.tsv", f"{EXAMPLE / 'sample_a.fasta'}\tvirus\n{EXAMPLE / 'sample_b.fasta'}\tother\n")
    other_classifier = tmp_path / "retrained" / "500_model.pth"
    other_classifier.parent.mkdir()
    shutil.copy(next(demo_models.glob("500_model.pth")), other_classifier)
    with open(other_classifier, "ab") as handle:
        handle.write(b"\0")  # other bytes: another classifier
    request = RunRequest(inputs_list=labels, workdir=workdir, models_dir=demo_models, classifier=str(other_classifier),
                         kind="evaluate", device="cpu")
    _, config, state = plan_run(request)
    plan = pipeline.plan(config, state.load(), Workdir(workdir))
    assert {stage: shards for stage, shards in plan.todo.items() if shards} == {
        "predict": list(range(config.shards)), "consensus": [0], "evaluate": [0]}
    assert Workdir(workdir).embeddings("esm2", 0).exists()  # kept, not recomputed


def test_other_embedding_models_are_still_refused(tmp_path, quiet_demo_run, demo_models):
    from virnucpro.errors import StateError

    workdir = tmp_path / "W"
    shutil.copytree(quiet_demo_run.workdir, workdir)
    labels = write(tmp_path / "labels.tsv", f"{EXAMPLE / 'sample_a.fasta'}\tvirus\n{EXAMPLE / 'sample_b.fasta'}\tother\n")
    request = RunRequest(inputs_list=labels, workdir=workdir, models_dir=demo_models, kind="evaluate",
                         esm_model="esm2_t33_650M_UR50D", device="cpu")
    with pytest.raises(StateError, match="models changed"):
        plan_run(request)


# ---------------------------------------------------------------- SLURM

def test_submit_dry_run_of_a_training_shows_the_train_job(tmp_path, two_fastas, demo_models):
    from tests.test_slurm_dryrun import sbatch_options
    from virnucpro.orchestration.slurm import PREVIEW_NOTE

    labels = write(two_fastas / "labels.tsv", "a.fa\tvirus\nb.fa\tother\n")
    workdir = Workdir(tmp_path / "T")
    done = cli("submit", str(labels), "--kind", "train", "--models", str(demo_models), "--workdir", str(workdir.root),
               "--partition", "gpu", "--cpu-partition", "cpu", "--shards", "2", "--dry-run")
    assert done.returncode == 0, done.stderr
    scripts = sorted(p.stem for p in workdir.dry_run_dir.glob("*.sh"))
    assert scripts == ["dnabert", "esm2", "prepare", "train"]
    script = workdir.dry_run_script("train").read_text()
    assert script.splitlines()[1] == PREVIEW_NOTE.strip() and "not for sbatch by hand" in done.stderr
    train = sbatch_options(script)
    assert train["gres"] == "gpu:1" and train["partition"] == "gpu" and train["requeue"] is True
    assert "array" in train and train["array"].startswith("0-0")  # one task
    assert "afterok" in train["dependency"]

    # a training on CPU: planned for real here (no SLURM needed), then `submit -w T` takes the workdir as it is
    request = RunRequest(inputs_list=labels, workdir=workdir.root, models_dir=demo_models, kind="train", device="cpu",
                         shards=2)
    plan_run(request)
    done = cli("submit", "--workdir", str(workdir.root), "--partition", "gpu", "--cpu-partition", "cpu", "--dry-run")
    assert done.returncode == 0, done.stderr
    train = sbatch_options(workdir.dry_run_script("train").read_text())
    assert "gres" not in train and train["partition"] == "cpu"
    assert not workdir.dry_run_script("predict").exists()
    assert json.loads(workdir.config.read_text())["kind"] == "train"


def test_restart_never_discards_the_classifier_it_is_given(tmp_path, two_fastas, demo_models):
    labels = write(two_fastas / "labels.tsv", "a.fa\tvirus\nb.fa\tother\n")
    workdir = Workdir(tmp_path / "T")
    plan_run(RunRequest(inputs_list=labels, workdir=workdir.root, models_dir=demo_models, kind="train", device="cpu"))
    inside = workdir.classifier_dir / "500_model.pth"  # as if trained here
    inside.parent.mkdir()
    shutil.copy(demo_models / "500_model.pth", inside)
    request = RunRequest(inputs_list=labels, workdir=workdir.root, models_dir=demo_models, classifier=str(inside),
                         kind="evaluate", device="cpu", restart=True)
    with pytest.raises(InputError, match="lies inside .*copy it out of the workdir"):
        plan_run(request)
    assert inside.exists() and RunConfig.load(workdir).kind == "train"


def test_a_run_file_of_an_unknown_kind_is_refused(tmp_path, two_fastas, demo_models):
    from virnucpro.errors import StateError

    labels = write(two_fastas / "labels.tsv", "a.fa\tvirus\nb.fa\tother\n")
    workdir = Workdir(tmp_path / "T")
    plan_run(RunRequest(inputs_list=labels, workdir=workdir.root, models_dir=demo_models, kind="train", device="cpu"))
    data = json.loads(workdir.config.read_text())
    workdir.config.write_text(json.dumps({**data, "kind": "fit"}))
    with pytest.raises(StateError, match="kind 'fit' is none of predict, train, evaluate"):
        RunConfig.load(workdir)


def test_training_prepare_uses_the_genbank_files_and_refuses_a_class_without_frames(tmp_path, two_fastas, demo_models,
                                                                                    capsys):
    from virnucpro.orchestration.runner import StageContext, run_locally

    rng = np.random.default_rng(3)
    gene = stop_free_orf(rng, 100)
    write_genbank(two_fastas / "v.gbk", [("virus1", gene, [(0, 300, 1)])])
    write(two_fastas / "v.fa", f">virus1\n{gene}\n")
    write_genbank(two_fastas / "o.gbk", [("other1", gene, [])])  # annotated, but without a CDS
    write(two_fastas / "o.fa", f">other1\n{gene}\n")
    labels = write(two_fastas / "labels.tsv", "v.fa\tvirus\tv.gbk\no.fa\tother\to.gbk\n")
    request = RunRequest(inputs_list=labels, workdir=tmp_path / "T", models_dir=demo_models, kind="train",
                         chunk_length=150, device="cpu")
    workdir, config, state = plan_run(request)
    assert config.genbank == [str(two_fastas / "v.gbk"), str(two_fastas / "o.gbk")]
    with pytest.raises(Exception, match="no input labelled 'other' yields a stop-free frame; only frames inside "
                                        "annotated CDS are kept"):
        run_locally(StageContext(workdir=workdir, config=config), state, ("prepare",))
    assert not workdir.prepare_summary.exists() and not workdir.shard_frames(0).exists()
    said = capsys.readouterr().err  # its frames are stop-free, but none is coding: not "no stop-free frame"
    assert f"o.fa: no stop-free frame lies inside a CDS annotated in {two_fastas / 'o.gbk'} (4 lie outside)" in said
    assert "no read yields a stop-free frame" not in said and "header-only" not in said

    # with the other class annotated too: prepare keeps the coding frames of both
    write_genbank(two_fastas / "o.gbk", [("other1", gene, [(0, 300, 1)])])
    # (the GenBank file is part of the input's identity; a record a class: split into windows of a chunk)
    workdir, config, state = plan_run(replace(request, holdout=0.5, holdout_window=150))
    run_locally(StageContext(workdir=workdir, config=config), state, ("prepare",))
    summary = json.loads(workdir.prepare_summary.read_text())
    assert [i["frames"] for i in summary["inputs"]] == [2, 2]  # chunks 1-150 and 151-300, frame F1 each


def test_evaluation_scores_every_stop_free_frame_whatever_the_genbank_column(tmp_path, two_fastas, demo_models, capsys):
    """An evaluation scores what `run` scores: a GenBank column (the training's LABELS file) is
    ignored, said once, and is no part of the run's identity."""
    from virnucpro.orchestration.runner import StageContext, run_locally

    rng = np.random.default_rng(4)
    gene = stop_free_orf(rng, 100)
    unannotated = stop_free_orf(rng, 100)[::-1].translate(str.maketrans("ACGT", "TGCA"))  # on the reverse strand
    sequence = gene + unannotated  # an annotated CDS, then a stop-free frame no CDS holds
    write_genbank(two_fastas / "v.gbk", [("virus1", sequence, [(0, 300, 1)])])
    write(two_fastas / "v.fa", f">virus1\n{sequence}\n")
    frames = {}
    for name, text in (("with", "v.fa\tvirus\tv.gbk\na.fa\tother\n"), ("without", "v.fa\tvirus\na.fa\tother\n")):
        labels = write(two_fastas / f"labels-{name}.tsv", text)
        request = RunRequest(inputs_list=labels, workdir=tmp_path / name, models_dir=demo_models, kind="evaluate",
                             chunk_length=300, device="cpu")
        capsys.readouterr()
        workdir, config, state = plan_run(request)
        run_locally(StageContext(workdir=workdir, config=config), state, ("prepare",))
        said = capsys.readouterr().err
        frames[name] = [i["frames"] for i in json.loads(workdir.prepare_summary.read_text())["inputs"]]
        assert said.count("GenBank column is ignored") == (1 if name == "with" else 0)
        assert "genbank" not in json.dumps(config.fingerprint["inputs"])
    assert frames["with"] == frames["without"] and frames["with"][0] > 1  # not only the frame inside the CDS


def random_genomes(rng, prefix: str, count: int, length: int) -> str:
    return "".join(f">{prefix}{n}\n{''.join(rng.choice(list('ACGT'), length))}\n" for n in range(count))


def test_prepare_refuses_an_empty_side_of_the_split_and_windows_make_one_that_works(tmp_path, two_fastas, demo_models):
    """A genome a class and the default --holdout 0.1: split by whole records, a side lacks a
    class. prepare says so in one line naming what to do, before any GPU work; split into windows
    (--holdout-window), both sides hold both classes."""
    from virnucpro.holdout import KEY_DTYPE, held_out
    from virnucpro.orchestration.runner import StageContext, run_locally

    rng = np.random.default_rng(11)
    write(two_fastas / "phages.fa", random_genomes(rng, "phage", 1, 12000))
    write(two_fastas / "bacteria.fa", random_genomes(rng, "chromosome", 1, 12000))
    labels = write(two_fastas / "labels.tsv", "phages.fa\tvirus\nbacteria.fa\tother\n")
    request = RunRequest(inputs_list=labels, workdir=tmp_path / "T", models_dir=demo_models, kind="train",
                         chunk_length=150, device="cpu")
    workdir, config, state = plan_run(request)
    with pytest.raises(VirnucproError) as refused:
        run_locally(StageContext(workdir=workdir, config=config), state, ("prepare",))
    message = str(refused.value)
    assert "side of the split (--holdout 0.1, --seed 42) has no" in message and "--holdout-window 150" in message
    assert "\n" not in message and str(labels) in message
    assert not workdir.prepare_summary.exists() and not workdir.shard_frames(0).exists()

    workdir, config, state = plan_run(replace(request, holdout_window=150))
    run_locally(StageContext(workdir=workdir, config=config), state, ("prepare",))
    sides = {(side, label): 0 for side in (False, True) for label in ("virus", "other")}
    for shard in range(config.shards):
        table = read_shard_frames(workdir.shard_frames(shard))
        keys = np.load(workdir.split_keys(shard))
        assert keys.dtype == KEY_DTYPE and len(keys) == len(table.frame_ids)
        for side, index in zip(held_out(keys, 42, 0.1).tolist(), table.input_index.tolist()):
            sides[(side, config.labels[index])] += 1
    assert all(sides.values()), sides


def test_the_same_record_in_two_inputs_lies_on_one_side(tmp_path, two_fastas, demo_models):
    from virnucpro.holdout import held_out
    from virnucpro.orchestration.runner import StageContext, run_locally

    rng = np.random.default_rng(12)
    shared = "".join(rng.choice(list("ACGT"), 3000))
    write(two_fastas / "v.fa", random_genomes(rng, "v", 30, 600) + f">shared_copy_1\n{shared}\n")
    write(two_fastas / "o.fa", f">shared_copy_2\n{shared.lower()}\n" + random_genomes(rng, "o", 30, 600))
    labels = write(two_fastas / "labels.tsv", "v.fa\tvirus\no.fa\tother\n")
    request = RunRequest(inputs_list=labels, workdir=tmp_path / "T", models_dir=demo_models, kind="train",
                         chunk_length=150, device="cpu", holdout=0.5, shards=2)
    workdir, config, state = plan_run(request)
    run_locally(StageContext(workdir=workdir, config=config), state, ("prepare",))
    keys = {}
    for shard in range(2):
        table = read_shard_frames(workdir.shard_frames(shard))
        for read_id, key in zip(table.read_ids, np.load(workdir.split_keys(shard)).tolist()):
            keys.setdefault(read_id, set()).add(key)
    assert keys["shared_copy_1"] == keys["shared_copy_2"] and len(keys["shared_copy_1"]) == 1
    for seed in range(20):  # so on one side whatever the seed
        assert len(set(held_out(np.array(list(keys["shared_copy_1"] | keys["shared_copy_2"]), np.uint64), seed, 0.5))) == 1


@pytest.mark.parametrize("command", [["run"], ["submit", "--dry-run", "--partition", "gpu"]])
def test_a_labels_file_given_as_an_inputs_list_is_named_as_such(tmp_path, two_fastas, demo_models, command):
    labels = write(two_fastas / "labels.tsv", "a.fa\tvirus\nb.fa\tother\n")
    done = cli(command[0], str(labels), "--workdir", str(tmp_path / "W"), "--models", str(demo_models), *command[1:])
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert f"{labels}: a LABELS file (FASTA, label per line), not an inputs list" in done.stderr
    assert "--kind train" in done.stderr and "input file not found" not in done.stderr


@pytest.mark.parametrize("command,extra,message", [
    ("train", ["--holdout", "1"], "'1' is not a fraction between 0 and 1"),
    ("train", ["--chunk-length", "20"], "'20' is not a chunk length from 30 to 3000"),
    ("train", ["--seed", "-1"], "argument --seed: -1 is not a seed (a whole number from 0 to 18446744073709551615)"),
    ("train", ["--seed", str(2 ** 64)], f"{2 ** 64} is not a seed"),
    ("train", ["--holdout-window", "-300"], "'-300' is not a whole number of at least 0"),
    ("train", ["--classifier", "x.pth"], "unrecognized arguments: --classifier"),
    ("evaluate", [], "no classifier given"),
    ("evaluate", ["--target-fdr", "0"], "'0' is not a fraction between 0 and 1"),
])
def test_train_and_evaluate_command_lines_refused_in_one_line(tmp_path, two_fastas, command, extra, message):
    labels = write(two_fastas / "labels.tsv", "a.fa\tvirus\nb.fa\tother\n")
    done = cli(command, str(labels), "--workdir", str(tmp_path / "W"), "--esm-model", "esm2_t6_8M_UR50D", *extra)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "W").exists()
