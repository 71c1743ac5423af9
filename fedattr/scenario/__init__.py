"""Scenarios: the schema of an experiment file, its overrides and grids, its checks, its plans.

``schema`` holds the pydantic models; ``errors`` turns raw data into a Scenario with readable
errors; ``overrides`` is the ``--set`` language, ``grid`` the sweep grids, ``tomlio`` reading and
writing files, ``schema_text`` the field listing; ``checks`` is the one place a scenario is
checked against the registries and this machine, ``plan`` turns it into jobs. The last two import
torch-side code, so they are imported by name (``fedattr.scenario.checks``), not here.
"""

from fedattr.scenario.errors import ScenarioError, dump_resolved, scenario_from_dict
from fedattr.scenario.grid import expand_grid, parse_grid
from fedattr.scenario.overrides import apply_overrides, parse_overrides
from fedattr.scenario.schema import (HONEST_ATTACK, AggregationSpec, ArmSpec, AttributionSpec,
                                     DataSpec, DetectorSpec, EvaluatorSpec, PartitionSpec,
                                     RuntimeSpec, Scenario, TrainSpec)
from fedattr.scenario.schema_text import schema_text
from fedattr.scenario.tomlio import load_scenario, read_toml, to_toml

__all__ = [
    "HONEST_ATTACK", "AggregationSpec", "ArmSpec", "AttributionSpec", "DataSpec", "DetectorSpec",
    "EvaluatorSpec", "PartitionSpec", "RuntimeSpec", "Scenario", "TrainSpec",
    "ScenarioError", "scenario_from_dict", "dump_resolved",
    "apply_overrides", "parse_overrides", "parse_grid", "expand_grid",
    "load_scenario", "read_toml", "to_toml", "schema_text",
]
