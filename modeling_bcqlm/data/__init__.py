"""Data for training and evaluating BcQLM: loaders of VQA datasets and files, and the synthetic shape scenes."""
