"""virnucpro: VirNucPro viral-sequence identification, step-first, locally or on SLURM.

Layers, each importing only from itself and the layers listed before it, with no import loop
anywhere (tests/test_layers.py reads the lines below and checks every import, function-level
ones included):

1. ground: errors, console, sequences, fasta, genbank, atomic, direct_io, paths, storage, pipeline, classifier_meta, calibration_meta, model_facts, json_files, holdout -- data and formats; pipeline is the stage table as data; holdout the held-out split's rule
2. models: engines, modelstore -- torch-side (engines) and file-side (modelstore, resolve_models); neither knows SLURM, runs nor commands
3. orchestration: orchestration -- plan, state, runner, status, writer, config, labels, provenance, task, slurm/; no torch, no engines, no stage code imported: stages are found by name from the table
4. work: stages, training, evaluation, report -- where orchestration and the engines meet
5. command line: cli -- one module per command family, the parser in cli/parser.py
"""

__version__ = "0.1.0"
