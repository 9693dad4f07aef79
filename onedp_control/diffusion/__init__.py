"""Noise schedules and samplers shared by every method."""
