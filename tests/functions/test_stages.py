"""The stage registry: complete, consistent with the request options and the stage modules."""

from __future__ import annotations

import pytest

from core import record as jobrecord
from core import stages
from core.options import OPTION_SPECS, PRESETS, normalize_options


def test_stages_in_pipeline_order_and_upstream_runs_first() -> None:
    assert stages.ORDER == ("frames", "sfm", "depth", "splat", "mesh") == jobrecord.STAGES
    for i, name in enumerate(stages.ORDER):
        st = stages.stage(name)
        assert st.name == name
        for up in st.upstream + st.optional_upstream:
            assert stages.ORDER.index(up) < i, (name, up)


@pytest.mark.parametrize("name", stages.ORDER)
def test_every_preset_sets_every_parameter_with_its_type(name: str) -> None:
    st = stages.stage(name)
    assert set(st.presets) == set(PRESETS)
    for preset, values in st.presets.items():
        assert set(values) == set(st.params), (name, preset)
        for param, value in values.items():
            assert type(value) is st.params[param], (name, preset, param, value)


@pytest.mark.parametrize("name", stages.ORDER)
def test_overrides_are_request_options_of_the_parameter_type(name: str) -> None:
    st = stages.stage(name)
    for option, param in st.options.items():
        assert option in OPTION_SPECS and param in st.params, (option, param)
        assert OPTION_SPECS[option].kind is st.params[param]


def test_every_option_but_preset_and_spot_sets_a_parameter() -> None:
    overridden = {o for st in stages.REGISTRY.values() for o in st.options}
    assert overridden == set(OPTION_SPECS) - {"preset", "spot"}


def test_resolve_applies_preset_then_overrides() -> None:
    opts = normalize_options({"preset": "high", "splat_steps": 50, "depth": False})
    assert stages.resolve("splat", opts)["steps"] == 50
    assert stages.resolve("splat", opts)["strategy"] == "mcmc"
    assert stages.resolve("frames", opts) == {"target_frames": 300, "min_frames": 8, "long_side": 1920,
                                              "preset": "high"}
    assert stages.resolve("depth", opts, depth_model="m")["model"] == "m"
    with pytest.raises(ValueError, match="unknown preset"):
        stages.resolve("frames", {"preset": "ultra"})
    with pytest.raises(KeyError, match="unknown stage"):
        stages.stage("texture")


def test_disabled_stages_and_what_reads_them() -> None:
    opts = normalize_options({"depth": False, "mesh": False})
    assert [s for s in stages.ORDER if stages.enabled(s, opts)] == ["frames", "sfm", "splat"]
    assert all(stages.enabled(s, normalize_options({})) for s in stages.ORDER)
    # splat reads depth only when it ran; nothing needs a stage that can be switched off.
    switchable = {s for s in stages.ORDER if "enabled" in stages.stage(s).params}
    assert switchable == {"depth", "mesh"}
    for st in stages.REGISTRY.values():
        assert not switchable & set(st.upstream), st.name


def test_machines_limits_outputs_and_best_effort() -> None:
    gpu = {s for s in stages.ORDER if stages.stage(s).gpu}
    assert gpu == {"depth", "splat", "mesh"}
    assert [s for s in stages.ORDER if stages.stage(s).best_effort] == ["mesh"]
    names = [n for st in stages.REGISTRY.values() for n in st.outputs]
    assert len(names) == len(set(names))  # output names are unique across stages
    for st in stages.REGISTRY.values():
        assert 0 < st.max_run_seconds <= 7 * 24 * 3600 and 0 <= st.max_retries <= 10
        assert st.outputs and all("/" not in f for f in st.outputs.values())
