"""Maintainer tools run from the checkout as modules (`python -m tools.NAME`): fuzzing, the
differential comparison, output checks, signature and series generation."""
