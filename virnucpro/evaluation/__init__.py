"""How far to trust a call: metrics of a classifier's scores on labeled sequences, and the files
and page that show them (`virnucpro-slurm evaluate`). numpy and matplotlib only: no torch."""
