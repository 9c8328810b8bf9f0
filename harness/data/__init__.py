"""Data the stages read: registry packages that ship offline data, text corpora, calibration text."""
