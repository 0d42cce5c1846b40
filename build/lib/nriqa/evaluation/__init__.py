"""Measuring a model: the field's metrics, the classical baseline, reports and plots."""
