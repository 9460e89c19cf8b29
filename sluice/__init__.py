"""Sluice core: settings, database and tenancy, pipeline-config identity, errors, CLI."""

__version__ = "0.1.0"
