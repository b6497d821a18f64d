"""Whole networks built from modules (mamba-ssm's models/ layer)."""
