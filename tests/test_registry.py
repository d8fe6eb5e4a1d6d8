import pytest

import methods
from bench.errors import BenchError
from methods.base import Method


def test_unknown_method_lists_the_registered_names():
    with pytest.raises(BenchError) as err:
        methods.get("no_such_method")
    assert "ce" in str(err.value) and "registered" in str(err.value)


def test_ce_is_registered_and_names_are_sorted():
    assert methods.get("ce").name == "ce"
    assert methods.names() == sorted(methods.names())


def test_registering_a_second_class_under_a_taken_name_fails():
    class Impostor(Method):
        name = "ce"

    with pytest.raises(ValueError, match="registered twice"):
        methods.register(Impostor)


def test_every_registered_method_has_params_with_defaults():
    for name in methods.names():
        cls = methods.get(name)
        params = cls.resolve_params("paper")
        assert isinstance(params, cls.Params)
        assert cls.resolve_params("quick") is not None


def test_unknown_method_setting_is_an_error():
    with pytest.raises(BenchError, match="no setting"):
        methods.get("ce").resolve_params("quick", {"gamma": "2"})
