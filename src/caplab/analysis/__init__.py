"""Instruments: pure functions over models, curves and runs that return numbers."""
