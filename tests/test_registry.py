import re

import pytest

import methods
from bench.errors import BenchError
from methods.base import Method


def test_unknown_method_lists_the_registered_names():
    with pytest.raises(BenchError) as err:
        methods.get("no_such_method")
    assert "ce" in str(err.value) and "registered" in str(err.value)


@pytest.mark.parametrize("typed, meant", [
    ("CurveNet", "curvenet"), ("MW-Net", "mwnet"), ("MW-Net(imb)", "mwnet"), ("O2U-Net", "o2u"),
    ("Class-Balanced", "cb"), ("LDAM-DRW", "ldam_drw"), ("Co-teaching", "coteaching"), ("CE", "ce"),
    ("curvnet", "curvenet"), ("fokal", "focal")])
def test_an_unknown_method_names_the_one_meant(typed, meant):
    """A method typed as the tables write it, or with a typo, gets the registry name to use."""
    with pytest.raises(BenchError, match=rf"^unknown method '{re.escape(typed)}'; did you mean '{meant}'\? "
                                         r"registered methods: aum, cb, ce,"):
        methods.get(typed)


def test_nothing_is_suggested_for_a_name_like_no_method():
    with pytest.raises(BenchError) as err:
        methods.get("xyz")
    assert str(err.value).startswith("unknown method 'xyz'; registered methods: aum, cb, ce,")
    assert methods.suggestion("xyz") is None


def test_ce_is_registered_and_names_are_sorted():
    assert methods.get("ce").name == "ce"
    assert methods.names() == sorted(methods.names())


def test_registering_a_second_class_under_a_taken_name_fails():
    class Impostor(Method):
        name = "ce"

    with pytest.raises(BenchError, match=r"^methods/ce\.py and (tests/)?test_registry\.py both register the "
                                         r"method name 'ce'; rename one$"):
        methods.register(Impostor)
    assert methods.get("ce") is not Impostor


def test_a_new_method_files_slips_are_one_line_errors_naming_it(monkeypatch, tmp_path):
    """What a newcomer gets wrong in a method file (README, "Adding a method") is caught when the
    file registers, with its file and class named, not later as a traceback."""
    from methods.base import NoParams

    class NoDataclassParams:
        gamma: float = 1.0

    def made(**attributes):
        return type("Mine", (Method,), {"name": "mine", "__module__": "methods.mine", **attributes})

    cases = [
        (made(Params=NoDataclassParams), r"methods/mine\.py: Mine\.Params must be a @dataclass"),
        (made(display_name=lambda self, params: "Mine"), r"Mine\.display_name must be a @classmethod"),
        (made(check_spec=staticmethod(lambda spec: None)), r"Mine\.check_spec must be a @classmethod"),
        (made(inert_settings=lambda self, params: {}), r"Mine\.inert_settings must be a @classmethod"),
        (type("Nameless", (Method,), {"Params": NoParams}), r"Nameless needs a class attribute name"),
    ]
    for cls, message in cases:
        with pytest.raises(BenchError, match=message):
            methods.register(cls)
    assert "mine" not in methods.names()
    # a clash found while discovering files names both files, whichever is imported first
    (tmp_path / "a_clash.py").write_text(
        "from methods import register\nfrom methods.base import Method\n\n"
        "@register\nclass Clash(Method):\n    name = 'focal'\n")
    monkeypatch.setattr(methods, "__path__", [*methods.__path__, str(tmp_path)])
    monkeypatch.setattr(methods, "_discovered", False)
    with pytest.raises(BenchError, match=r"^methods/focal\.py and methods/a_clash\.py both register the method "
                                         r"name 'focal'; rename one$"):
        methods.names()
    assert methods._REGISTRY["focal"].__module__ == "methods.focal"  # the first one stays


def test_every_registered_method_has_params_with_defaults():
    for name in methods.names():
        cls = methods.get(name)
        params = cls.resolve_params("paper")
        assert isinstance(params, cls.Params)
        assert cls.resolve_params("quick") is not None


def test_unknown_method_setting_is_an_error():
    with pytest.raises(BenchError, match="no setting"):
        methods.get("ce").resolve_params("quick", {"gamma": "2"})


def _toy_method(presets=None, omitted=()):
    """A method class (not registered) with two settings, one written with an int default."""
    from dataclasses import dataclass
    from typing import ClassVar

    @dataclass
    class ToyParams:
        quantile: float = 1
        min_keep: int = 0
        OMITTED_WHEN_DEFAULT: ClassVar[tuple[str, ...]] = omitted

    class Toy(Method):
        name = "toy"
        Params = ToyParams

    Toy.presets = presets or {}
    return Toy


def test_settings_are_read_as_their_annotated_type_and_errors_name_them():
    toy = _toy_method()
    assert toy.resolve_params("quick", {"quantile": "0.5"}).quantile == 0.5  # float field, int default
    with pytest.raises(BenchError, match=r"^toy\.quantile: cannot read 'abc' as float$"):
        toy.resolve_params("quick", {"quantile": "abc"})
    with pytest.raises(BenchError, match=r"toy\.min_keep: cannot read '0\.5' as int"):
        toy.resolve_params("quick", {"min_keep": "0.5"})


def test_a_preset_with_an_unknown_setting_is_a_one_line_error():
    with pytest.raises(BenchError, match="preset 'quick' sets unknown settings quantlie"):
        _toy_method(presets={"quick": {"quantlie": 0.5}}).resolve_params("quick")


def test_a_setting_added_later_keeps_earlier_keys_at_its_default():
    """A Params class lists settings added after runs were stored in OMITTED_WHEN_DEFAULT: at their
    default they stay out of the spec (so out of the key); set, they enter it; reading fills them in."""
    from bench.spec import RunSpec
    from methods.base import params_items

    old, new = _toy_method(), _toy_method(omitted=("min_keep",))
    assert params_items(new.Params()) == (("quantile", 1),)
    assert params_items(old.Params()) == (("min_keep", 0), ("quantile", 1))  # not listed: always stored
    assert params_items(new.Params(min_keep=3)) == (("min_keep", 3), ("quantile", 1))
    spec = RunSpec(method="toy", params=params_items(new.Params()))
    assert new.params_from_spec(spec) == new.Params()


def test_a_method_file_that_cannot_be_imported_is_named(monkeypatch, tmp_path):
    broken = tmp_path / "broken_method.py"
    broken.write_text("def fit(:\n")
    monkeypatch.setattr(methods, "__path__", [*methods.__path__, str(tmp_path)])
    monkeypatch.setattr(methods, "_discovered", False)
    with pytest.raises(BenchError, match=r"methods/broken_method\.py cannot be imported \(line 1\): SyntaxError"):
        methods.names()


def test_a_method_file_that_registers_nothing_is_warned_about(monkeypatch, tmp_path):
    (tmp_path / "forgot_register.py").write_text(
        "from methods.base import Method\n\nclass Forgot(Method):\n    name = 'forgot'\n")
    monkeypatch.setattr(methods, "__path__", [*methods.__path__, str(tmp_path)])
    monkeypatch.setattr(methods, "_discovered", False)
    with pytest.warns(UserWarning, match=r"methods/forgot_register\.py registers no method"):
        methods.names()
    assert "forgot" not in methods.names()


def test_get_finds_a_method_in_a_fresh_process_before_anything_listed_them():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", "import methods; print(methods.get('focal').__name__)"],
                       cwd=root, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == methods._REGISTRY["focal"].__name__


def test_registering_the_same_class_again_is_harmless():
    ce = methods.get("ce")
    assert methods.register(ce) is ce and methods.get("ce") is ce


def test_an_empty_method_name_is_refused():
    from methods.base import NoParams

    cls = type("Blank", (Method,), {"name": "", "Params": NoParams, "__module__": "methods.blank"})
    with pytest.raises(BenchError, match=r"methods/blank\.py: Blank needs a class attribute name"):
        methods.register(cls)
    assert "" not in methods.names()


def test_shared_and_private_modules_are_not_taken_for_method_files(monkeypatch, tmp_path):
    """Discovery imports only method files: the shared pieces (base, meta, ...) and modules whose
    name starts with _ register nothing and are not warned about (nor imported)."""
    import sys
    import warnings

    (tmp_path / "_private_helper.py").write_text("raise RuntimeError('a private module was imported')\n")
    monkeypatch.setattr(methods, "__path__", [*methods.__path__, str(tmp_path)])
    monkeypatch.setattr(methods, "_discovered", False)
    monkeypatch.setattr(methods, "_SILENT", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        names = methods.names()
    assert "ce" in names and "methods._private_helper" not in sys.modules


def test_params_checks_refuse_bools_and_non_finite_numbers_and_keep_their_bounds_inclusive():
    """``check_int`` / ``check_number`` (methods/base.py, used by every Params): True is not 1,
    inf and NaN are not numbers here, the minimum (0 for numbers) is allowed."""
    from methods.base import check_int, check_number

    check_int(0, "x")
    check_int(3, "x", minimum=3)
    check_number(0, "x")
    check_number(0.0, "x")
    check_number(2.5, "x")
    for bad, minimum in ((True, 0), (False, 0), (2, 3), (1.0, 0), ("1", 0)):
        with pytest.raises(BenchError, match="integer >="):
            check_int(bad, "x", minimum)
    for bad in (True, False, -0.1, float("inf"), float("nan"), "1"):
        with pytest.raises(BenchError, match="number >= 0"):
            check_number(bad, "x")
