"""Stage 4, predict: [DNABERT-S | ESM-2] features -> MLP -> softmax, per shard.

Rows are paired by position: both embedding files must refer to exactly the shard's frames, in
order (frame count and id digest, checked against the frame table); a file that does not is
refused with a StaleInputError naming the stage and shard that wrote it (the original let ids
drift from rows). Only the table's id column is read, not its nucleotides and proteins. Features
are read straight from the two files (past the page cache, storage.RowReader) into two reused block
buffers (no concatenated copy): the next block is read from both files at once (several 32 MiB
reads in flight) while the classifier scores this one, and the next shard's ids are read ahead
(storage.read_ahead) while this shard's rows are read.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

from ..errors import InputError, StaleInputError
from ..orchestration.runner import StageContext
from ..storage import RowReader, open_matrix, read_ahead, read_frame_ids, write_shard_matrix
from .embedding import require_finite, resolve_device

ROWS_PER_BLOCK = 8_192  # a shard's features never sit in memory all at once (two 109 MB blocks at 3328 wide)


def expected_frames(workdir, shards: list[int]) -> list[int]:
    """Frames prepare wrote into each of these shards (one read of its summary), so a table cut at
    a line end is refused too."""
    try:
        entries = json.loads(workdir.prepare_summary.read_text())["shards"]
        return [int(entries[shard]["frames"]) for shard in shards]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        raise StaleInputError(f"{workdir.prepare_summary}: missing or unreadable; the prepare stage will run again",
                              "prepare", 0) from None


def torch_copy(destination, source) -> None:
    """np.copyto by torch: same values, about 1.6x (float32) and 4x (float16 widened) as fast here."""
    import torch

    torch.from_numpy(destination).copy_(torch.from_numpy(source))


def open_stage(ctx: StageContext):
    import numpy as np

    from ..engines import classifier  # torch: when the stage opens

    config, workdir = ctx.config, ctx.workdir
    try:
        model = classifier.load_classifier(config.models.classifier, trust_pickles=config.trust_model_pickles)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    device = resolve_device(config.device)
    model.to(device)

    def process(shard: int) -> dict:
        upcoming = ctx.next_shard
        counts = expected_frames(workdir, [shard] if upcoming is None else [shard, upcoming])
        ids = read_ahead(read_frame_ids, workdir.shard_frames(shard), counts[0],
                         then=None if upcoming is None else (workdir.shard_frames(upcoming), counts[1]))
        scores = np.zeros((len(ids), 2), np.float32)
        with open_matrix(workdir.embeddings("dnabert", shard), ids, producer=("dnabert", shard)) as (_, dna), \
                open_matrix(workdir.embeddings("esm2", shard), ids, producer=("esm2", shard)) as (_, protein), \
                RowReader(dna, torch_copy) as dna_rows, RowReader(protein, torch_copy) as protein_rows, \
                ThreadPoolExecutor(max_workers=2, thread_name_prefix="predict-read") as readers:
            left, width = dna.shape[1], dna.shape[1] + protein.shape[1]
            # two block buffers: block k+1 is read (both files at once) while block k is classified
            buffers = [np.empty((min(ROWS_PER_BLOCK, max(len(ids), 1)), width), np.float32) for _ in range(2)]
            blocks = [(start, min(start + ROWS_PER_BLOCK, len(ids))) for start in range(0, len(ids), ROWS_PER_BLOCK)]

            def read_block(number: int) -> list:
                start, stop = blocks[number]
                features = buffers[number % 2]
                # each file's rows go into their column range of the block buffer
                return [(kind, readers.submit(reader.read, start, stop, features[columns]))
                        for kind, reader, columns in (("dnabert", dna_rows, np.s_[:, 0:left]),
                                                      ("esm2", protein_rows, np.s_[:, left:width]))]

            pending = read_block(0) if blocks else []
            for number, (start, stop) in enumerate(blocks):
                for kind, read in pending:
                    try:
                        read.result()
                    except OSError as exc:
                        raise StaleInputError(f"{workdir.embeddings(kind, shard)}: unreadable rows ({exc}); the {kind} "
                                              f"stage will run again for shard {shard}", kind, shard) from None
                pending = read_block(number + 1) if number + 1 < len(blocks) else []
                try:
                    scores[start:stop] = classifier.classify(model, buffers[number % 2][:stop - start])
                except ValueError as exc:
                    raise InputError(f"{config.models.classifier}: {exc} (DNABERT-S {dna.shape[1]} + ESM-2 "
                                     f"{protein.shape[1]}); use the classifier that matches these models") from None
        require_finite(scores, config.models.classifier, f"predict shard {shard}")
        write_shard_matrix(workdir.predictions(shard), ids, scores, name="scores")
        return {"frames": len(ids), "device": device}
    return process
