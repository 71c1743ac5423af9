"""fedattr.core.registry: one registry for evaluators, detectors, attacks, aggregators, stopping rules."""

from __future__ import annotations

import inspect

import pytest

from fedattr.core.errors import UserError
from fedattr.core.registry import Registry, RegistryError, did_you_mean, init_params


class _Plain:
    """No constructor of its own: takes no parameters."""


class _Rule:
    def __init__(self, tolerance: float, window: int = 5):
        self.tolerance, self.window = tolerance, window


def _registry() -> Registry:
    reg = Registry("stopping rule", set_name=True)

    @reg.register("relative_change")
    class Relative(_Rule):
        pass

    reg.register("plain", _Plain)
    return reg


def test_did_you_mean_suffix():
    assert did_you_mean("krun", ["krum", "norm"]) == "; did you mean 'krum'?"
    assert did_you_mean("zzz", ["krum", "norm"]) == ""
    assert did_you_mean("x", []) == ""


def test_register_lookup_and_mapping_behaviour():
    reg = _registry()
    assert list(reg) == ["relative_change", "plain"]  # registration order
    assert reg.names() == ["plain", "relative_change"]  # sorted
    assert "plain" in reg and "other" not in reg and len(reg) == 2
    assert reg["plain"] is _Plain and reg.get("other") is None and reg.get("other", 3) == 3
    assert reg["relative_change"].name == "relative_change"  # set_name
    assert dict(reg.items())["plain"] is _Plain
    # the same entry again is a no-op; another entry under a taken name is an error
    assert reg.register("plain", _Plain) is _Plain
    with pytest.raises(ValueError, match="stopping rule name 'plain' already registered"):
        reg.register("plain", _Rule)


def test_unknown_name_names_the_closest_and_every_choice():
    reg = _registry()
    with pytest.raises(RegistryError, match=r"unknown stopping rule 'relative_chnage'; did you mean "
                                             r"'relative_change'\?; choose one of: plain, relative_change"):
        reg["relative_chnage"]
    with pytest.raises(UserError):  # the CLI's one-line error, exit status 2
        reg.make("nothing")
    with pytest.raises(ValueError):  # and a ValueError for library callers
        reg.make("nothing")


def test_make_checks_every_parameter_by_name():
    reg = _registry()
    rule = reg.make("relative_change", tolerance=0.1)
    assert (rule.tolerance, rule.window) == (0.1, 5)
    with pytest.raises(RegistryError, match=r"unknown parameter 'windw' for stopping rule 'relative_change'; "
                                             r"did you mean 'window'\?; allowed: tolerance, window=5"):
        reg.make("relative_change", tolerance=0.1, windw=3)
    with pytest.raises(RegistryError, match="stopping rule 'relative_change' needs parameter\\(s\\) tolerance"):
        reg.make("relative_change", window=3)
    with pytest.raises(RegistryError, match="unknown parameter 'x' for stopping rule 'plain'.*allowed: none"):
        reg.make("plain", x=1)
    assert isinstance(reg.make("plain"), _Plain)
    # exclude: parameters the caller sets itself are not the user's to give
    with pytest.raises(RegistryError, match="unknown parameter 'window'"):
        reg.check("relative_change", {"tolerance": 1, "window": 2}, exclude=("window",))


def test_init_params_of_classes_and_callables():
    assert init_params(_Plain) == {}
    assert list(init_params(_Rule)) == ["tolerance", "window"] and init_params(_Rule)["window"] == 5

    def f(a, *args, b=2, **kw):
        return a

    assert init_params(f) == {"a": inspect.Parameter.empty, "b": 2}


def test_every_registry_of_the_package_is_one_registry():
    from fedattr.attacks import ATTACKS
    from fedattr.defenses import DETECTORS, register_scoring_rules
    from fedattr.evaluators import EVALUATORS
    from fedattr.evaluators.stopping import RULES
    from fedattr.strategies.aggregators import AGGREGATORS

    for reg in (ATTACKS, DETECTORS, EVALUATORS, RULES, AGGREGATORS):
        assert isinstance(reg, Registry)
    assert {"shapley", "tmc"} <= set(EVALUATORS) and "krum" in DETECTORS and "latent" in ATTACKS
    assert "fedavg" in AGGREGATORS and "max_evaluations" in RULES
    # robust scorers join the evaluator registry explicitly, idempotently
    register_scoring_rules()
    register_scoring_rules()
    assert {"clipped", "mom", "coverage_weighted", "filtered"} <= set(EVALUATORS)
    assert EVALUATORS["clipped"].name == "clipped"


def test_each_registry_reports_unknown_names_alike():
    from fedattr.attacks import make_attack
    from fedattr.defenses import make_detector
    from fedattr.evaluators import make_evaluator
    from fedattr.evaluators.stopping import stopping_from_config
    from fedattr.strategies.aggregators import check_aggregator

    for call, text in ((lambda: make_attack("latnet"), "unknown attack 'latnet'; did you mean 'latent'"),
                       (lambda: make_detector("krun"), "unknown detector 'krun'; did you mean 'krum'"),
                       (lambda: make_evaluator("shapely"), "unknown evaluator 'shapely'; did you mean 'shapley'"),
                       (lambda: stopping_from_config({"max_time_": 1}),
                        "stop.max_time_: unknown stopping rule 'max_time_'; did you mean 'max_time'")):
        with pytest.raises(RegistryError if "stop." not in text else ValueError, match=text):
            call()
    assert check_aggregator("fedmedain", {}, 5).startswith("unknown aggregator 'fedmedain'; did you mean 'fedmedian'")
    assert "did you mean 'beta'" in check_aggregator("fedtrimmedavg", {"bta": 0.1}, 5)
