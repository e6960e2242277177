"""Benchmark readers: GEO-Bench, Copernicus-Bench, EuroSAT MS and the eo_samples checks, each with
`open_split(root, dataset, split, partition)` (eval/tasks.py names them)."""
