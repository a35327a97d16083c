"""Data sets the project generates itself (no downloads)."""

from zoo.data.synthetic import adding_problem
