"""Benchmarks: hot paths side by side with the references and the floor (`python -m benchmarks.<name>`).

These are not tests: they print tables of times, memory and ratios measured in the same process run,
since the machines are shared and only ratios from one run are comparable."""
