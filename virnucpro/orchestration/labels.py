"""A LABELS file: the inputs of a training or an evaluation, each with its class.

One input per line: a FASTA file (plain or .gz), its label (`virus` or `other`) and, optionally,
the GenBank file of the same records (`.gbff`/`.gbk`, plain or .gz: prepare then keeps only the
frames inside annotated CDS). Columns are separated by tabs, or by spaces when a line has no
tab. Paths, `#` comments and a file listed twice work as in an inputs list (fasta.read_inputs_list):
relative paths resolve against the LABELS file's folder. No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..fasta import listed_file, read_list_text, sniff_fasta, strip_comment

VIRUS, OTHER = "virus", "other"
LABELS = (VIRUS, OTHER)
COLUMNS = "FASTA<TAB>virus|other[<TAB>GenBank]"


@dataclass(frozen=True)
class LabelledInputs:
    inputs: list[Path]
    labels: list[str]
    genbank: list[Path | None]


def read_labels(labels_path: str | Path, need_both_classes: bool = False) -> LabelledInputs:
    """The labelled inputs a LABELS file lists, in order; one line naming the file and line for
    anything wrong. `need_both_classes` (training): a class with no input is refused."""
    labels_path = Path(labels_path)
    text = read_list_text(labels_path, "LABELS file", f"one '{COLUMNS}' line per input")
    out = LabelledInputs([], [], [])
    seen: dict[tuple[int, int], int] = {}  # FASTA identity -> its index in `out`
    for number, line in enumerate(text.splitlines(), 1):
        entry = strip_comment(line)
        if not entry:
            continue
        where = f"{labels_path}, line {number}"
        columns = entry.split("\t") if "\t" in entry else entry.split()
        columns = [c.strip() for c in columns]
        if len(columns) not in (2, 3) or not all(columns):
            raise InputError(f"{where}: expected '{COLUMNS}', found {len(columns)} column(s); "
                             "write the FASTA path, its label and optionally its GenBank file")
        label = columns[1].lower()
        if label not in LABELS:
            raise InputError(f"{where}: label {columns[1]!r} is neither 'virus' nor 'other'; use one of those two")
        fasta, identity = listed_file(Path(columns[0]), labels_path)
        genbank = listed_file(Path(columns[2]), labels_path, "GenBank file")[0] if len(columns) == 3 else None
        if identity in seen:
            first = seen[identity]
            if out.labels[first] != label:
                raise InputError(f"{where}: {fasta} is listed twice with two labels ({out.labels[first]} and "
                                 f"{label}); give each FASTA file one label")
            if out.genbank[first] != genbank:
                raise InputError(f"{where}: {fasta} is listed twice with two GenBank files; give it one")
            continue  # listed twice alike: one input
        seen[identity] = len(out.inputs)
        out.inputs.append(fasta)
        out.labels.append(label)
        out.genbank.append(genbank)
    if not out.inputs:
        raise InputError(f"{labels_path}: the LABELS file names no files; add one '{COLUMNS}' line per input")
    if need_both_classes:
        absent = [label for label in LABELS if label not in out.labels]
        if absent:
            raise InputError(f"{labels_path}: every input is labelled {out.labels[0]!r}, none {absent[0]!r}; "
                             "a classifier learns from both classes: add inputs of the other class")
    for path in out.inputs:
        sniff_fasta(path)
    return out


def check_one_label_per_content(inputs: list[str], labels: list[str], sha256s: list[str], labels_path) -> None:
    """Refuse two inputs of the same content (SHA-256) under the two labels: every frame of it would
    be trained (or scored) as both 'virus' and 'other', so the classifier could learn nothing from it
    and the evaluation would count each read as both right and wrong; it is a copy labelled twice
    by mistake, never a wish. (Listed twice under one path, the same file is refused by read_labels.)"""
    first: dict[str, int] = {}
    for index, digest in enumerate(sha256s):
        earlier = first.setdefault(digest, index)
        if labels[earlier] != labels[index]:
            raise InputError(f"{labels_path}: {inputs[index]} ({labels[index]}) has the same content (SHA-256 "
                             f"{digest[:16]}...) as {inputs[earlier]} ({labels[earlier]}); a sequence cannot be both "
                             "'virus' and 'other': remove one of the two, or fix its label")
