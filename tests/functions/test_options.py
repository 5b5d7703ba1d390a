import pytest

from core.options import OptionsError, json_schema, normalize_options


def test_defaults_fill_preset() -> None:
    assert normalize_options(None) == {"preset": "standard"}
    assert normalize_options({"preset": "preview", "splat_steps": 500.0}) == {"preset": "preview", "splat_steps": 500}


@pytest.mark.parametrize("raw, fragment", [
    ([], "must be a JSON object"),
    ({"bogus": 1}, "options.bogus is not a known option"),
    ({"preset": "ultra"}, "must be one of preview, standard, high"),
    ({"splat_steps": True}, "must be a number"),
    ({"splat_steps": 1.5}, "must be an integer"),
    ({"splat_steps": 5}, "at least 10"),
    ({"sh_degree": 4}, "at most 3"),
    ({"mesh_voxel_size": float("nan")}, "finite"),
    ({"mesh": "yes"}, "true or false"),
])
def test_bad_options_are_named(raw: object, fragment: str) -> None:
    with pytest.raises(OptionsError, match=fragment):
        normalize_options(raw)


def test_schema_lists_every_option() -> None:
    schema = json_schema()
    assert schema["additionalProperties"] is False
    assert schema["properties"]["preset"]["enum"] == ["preview", "standard", "high"]
    assert schema["properties"]["sh_degree"] == {"type": "integer", "minimum": 0, "maximum": 3,
                                                 "description": "spherical harmonics degree"}
