"""Data only: the shipped study spaces (`*.yaml`), documented in README.md. The loader is `study/spaces.py`.

A package so that the YAML files install as its package data (`SPACES_DIR` in `study/spaces.py` is this folder).
"""
