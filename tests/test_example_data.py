"""The bundled example reads (issue 30 item 11): cut from the real genomes their README names, so
the first report a newcomer sees has the frame statistics of real data, not of random sequence."""

import json
import re

from virnucpro.fasta import read_inputs_list
from virnucpro.orchestration.config import ModelSpec, RunConfig
from virnucpro.orchestration.runner import StageContext
from virnucpro.paths import Workdir
from virnucpro.stages import prepare

HEADER = re.compile(r">(\S+) (NC_\d+\.\d) start=(\d+) end=(\d+) strand=([+-])$")
GENOME_LENGTHS = {"NC_001422.1": 5386, "NC_005816.1": 9609}  # phiX174, Y. pestis plasmid pPCP1


def records(path):
    text = path.read_text()
    for block in text[1:].split("\n>"):
        header, *lines = block.splitlines()
        yield ">" + header, "".join(lines)


def test_every_read_names_its_genome_and_place_as_the_readme_says(example_inputs):
    readme = (example_inputs.parent / "README.md").read_text()
    for path in read_inputs_list(example_inputs):
        accessions = set()
        for header, sequence in records(path):
            match = HEADER.fullmatch(header)
            assert match, header
            accession, start, end = match[2], int(match[3]), int(match[4])
            assert (end - start) % GENOME_LENGTHS[accession] + 1 == len(sequence), header  # circular genome
            accessions.add(accession)
        (accession,) = accessions  # one genome per input
        assert f"`{path.name}`" in readme and accession in readme
    assert "meaningless" in readme and "bench/example_reads.py" in readme and "Biopython" in readme


def test_example_reads_have_the_frame_statistics_of_real_dna(example_inputs, tmp_path):
    """The simulated reads it replaced: 30 of 50 reads without a stop-free frame, 25 frames from 65
    chunks. A phage is densely coding; a coding region keeps one of its chunk's six frames."""
    inputs = [str(p) for p in read_inputs_list(example_inputs)]
    config = RunConfig(inputs_list=str(example_inputs), inputs=inputs, input_names=["sample_a", "sample_b"],
                       chunk_length=500, shards=1, models=ModelSpec("esm", "dnabert", "clf"))
    workdir = Workdir(tmp_path / "w")
    prepare.prepare(StageContext(workdir=workdir, config=config))
    phage, plasmid = json.loads(workdir.prepare_summary.read_text())["inputs"]
    assert phage["reads_without_frames"] <= 0.15 * phage["reads"], phage
    assert phage["frames"] >= phage["chunks"], phage
    total = phage["reads_without_frames"] + plasmid["reads_without_frames"]
    assert total <= 0.25 * (phage["reads"] + plasmid["reads"]), (phage, plasmid)
