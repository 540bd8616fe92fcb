"""Scenario input: units, pydantic schema, YAML loading with file:line errors."""
