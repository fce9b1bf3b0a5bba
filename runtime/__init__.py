"""Conveyor: an event-driven worker runtime for serverless model containers."""

__version__ = "0.1.0"
