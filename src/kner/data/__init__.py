"""Data stage: readers of every corpus and annotation format, the canonical example, splits,
label schemes and mappings, augmentation, acquisition of the public corpora, and the data check."""
