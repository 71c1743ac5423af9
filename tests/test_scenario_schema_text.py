"""fedattr.scenario.schema_text: the field listing of `fedattr scenario schema`."""

from __future__ import annotations


from fedattr.scenario import Scenario, schema_text


def test_schema_text_lists_every_field_with_its_description():
    text = schema_text()
    for name in Scenario.model_fields:
        assert name in text
    for needle in ["partition.alpha: float = 0.5", "(> 0)", '"iid" | "dirichlet"',
                   "[[arms]]", "start_round: int = 1", "data.pool_size: int | None = None",
                   "Dirichlet concentration"]:
        assert needle in text, needle
