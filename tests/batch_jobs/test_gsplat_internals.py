"""gsplat's internals that batch_jobs/gaussians/gsplat_internals.py uses, as that module expects them.

Each check names the gsplat symbol that changed, so a gsplat upgrade fails here, loudly, rather
than as a wrong densification or a crash inside a training run. Plus: the installed gsplat is
the one pyproject.toml and constraints.txt pin (and the job image builds). Fast: no training.
"""

from __future__ import annotations

import ast
import importlib.metadata
import inspect
import re
import textwrap
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gsplat
import gsplat.relocation
import gsplat.strategy.ops as ops
import pytest
import torch
from gsplat.cuda import _torch_impl
from gsplat.strategy import DefaultStrategy, MCMCStrategy

from batch_jobs.gaussians import gsplat_internals
from batch_jobs.gaussians.strategy import (
    MIN_RESET_INTERVAL,
    binomials,
    enable_cpu_mcmc,
    make_strategy,
    relocation_torch,
)

REPO = Path(__file__).resolve().parents[2]
ADAPTER = "batch_jobs/gaussians/gsplat_internals.py"


def changed(symbol: str, what: str) -> str:
    return (f"gsplat internal `{symbol}` changed: {what} ({ADAPTER} was written against gsplat "
            f"{gsplat_internals.GSPLAT_VERSION}; installed: {gsplat.__version__})")


def params(fn: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(inspect.unwrap(fn)).parameters)


def lookup(owner: Any, name: str, symbol: str) -> Any:
    assert hasattr(owner, name), changed(symbol, "it no longer exists")
    return getattr(owner, name)


def called_keywords(fn: Callable[..., Any], callee: str) -> list[set[str]]:
    """The keyword names of every call `callee(...)` in `fn`'s source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(inspect.unwrap(fn))))
    return [{k.arg for k in node.keywords if k.arg} for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == callee]


# -- the pin ------------------------------------------------------------------------------------


def pyproject_pin() -> str:
    jobs = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["jobs"]
    specs = [d for d in jobs if re.match(r"^\s*gsplat\b", d)]
    assert len(specs) == 1, f"pyproject.toml's jobs extra lists gsplat {len(specs)} times: {specs}"
    m = re.fullmatch(r"\s*gsplat\s*==\s*([^\s;,]+)\s*", specs[0])
    assert m, f"pyproject.toml's jobs extra must pin gsplat exactly (gsplat==X.Y.Z), not {specs[0]!r}: {ADAPTER}"
    return m.group(1)


def test_installed_gsplat_is_the_pinned_one() -> None:
    pin = pyproject_pin()
    constraints = re.findall(r"(?m)^\s*gsplat\s*==\s*(\S+)", (REPO / "constraints.txt").read_text())
    assert constraints == [pin], f"constraints.txt pins gsplat {constraints}, pyproject.toml {pin}"
    assert pin == gsplat_internals.GSPLAT_VERSION, (
        f"gsplat is pinned at {pin} but {ADAPTER} was written against {gsplat_internals.GSPLAT_VERSION}: "
        f"check its internals in {pin}, then update GSPLAT_VERSION")
    installed = importlib.metadata.version("gsplat")
    assert installed == pin == gsplat.__version__, f"installed gsplat {installed}, pinned {pin}"


def test_the_job_image_builds_the_pinned_gsplat() -> None:
    """The image compiles gsplat from source under constraints.txt (not pyproject's `jobs` line)."""
    dockerfile = (REPO / "batch_jobs" / "Dockerfile").read_text()
    installs = [ln for ln in dockerfile.replace("\\\n", " ").splitlines()
                if "pip install" in ln and re.search(r"\sgsplat(\s|$)", ln)]
    assert installs, "batch_jobs/Dockerfile no longer pip-installs gsplat"
    for line in installs:
        assert "-c constraints.txt" in line, f"the image's gsplat install ignores constraints.txt: {line.strip()}"
    assert not re.search(r"gsplat\s*[=<>~!]=", dockerfile), "batch_jobs/Dockerfile names its own gsplat version"
    from batch_jobs.image_requirements import SEPARATE
    assert "gsplat" in SEPARATE


# -- gsplat.cuda._torch_impl --------------------------------------------------------------------

TORCH_IMPL = "gsplat.cuda._torch_impl"


@pytest.mark.parametrize(("name", "positional", "keywords"), [
    ("_quat_scale_to_covar_preci", ["quats", "scales", "compute_covar", "compute_preci", "triu"], set()),
    ("_fully_fused_projection", ["means", "covars", "viewmats", "Ks", "width", "height"],
     {"eps2d", "near_plane", "far_plane"}),
    ("_spherical_harmonics", ["degrees_to_use", "dirs", "coeffs"], set()),
])
def test_reference_function_signatures(name: str, positional: list[str], keywords: set[str]) -> None:
    symbol = f"{TORCH_IMPL}.{name}"
    got = params(lookup(_torch_impl, name, symbol))
    assert got[:len(positional)] == positional, changed(
        symbol, f"its leading parameters are {got[:len(positional)]}, the adapter passes {positional} by position")
    assert keywords <= set(got), changed(symbol, f"it lost the keyword parameters {sorted(keywords - set(got))}")


def test_reference_functions_return_what_the_adapter_expects() -> None:
    n = 3
    means = torch.tensor([[0.0, 0.0, 3.0], [0.5, -0.2, 4.0], [0.0, 0.0, -2.0]])  # the last behind the camera
    quats = torch.nn.functional.normalize(torch.tensor([[1.0, 0, 0, 0], [0.9, 0.1, 0.2, 0], [1, 0, 0, 0]]), dim=-1)
    scales = torch.full((n, 3), 0.05)

    symbol = f"{TORCH_IMPL}._quat_scale_to_covar_preci"
    out = gsplat_internals.quat_scale_to_covar_preci(quats, scales, compute_covar=True, compute_preci=False)
    assert isinstance(out, tuple) and len(out) == 2, changed(symbol, f"returns {type(out).__name__}, not a pair")
    covars, preci = out
    assert preci is None and covars.shape == (n, 3, 3), changed(
        symbol, f"returned ({tuple(covars.shape)}, {preci!r}) for compute_preci=False")
    assert torch.allclose(covars[0], torch.eye(3) * 0.0025, atol=1e-7), changed(symbol, "not R S S^T R^T")

    symbol = f"{TORCH_IMPL}._fully_fused_projection"
    K = torch.tensor([[100.0, 0, 32], [0, 100, 24], [0, 0, 1]])
    out = gsplat_internals.fully_fused_projection(means, covars, torch.eye(4)[None], K[None], 64, 48,
                                                  eps2d=0.3, near_plane=0.01, far_plane=1e10)
    assert isinstance(out, tuple) and len(out) == 5, changed(symbol, "no longer returns 5 values")
    radii, means2d, depths, conics, _ = out
    shapes = [tuple(t.shape) for t in (radii, means2d, depths, conics)]
    assert shapes == [(1, n, 2), (1, n, 2), (1, n), (1, n, 3)], changed(
        symbol, f"(radii, means2d, depths, conics) shapes {shapes}, expected [1, N, 2], [1, N, 2], [1, N], [1, N, 3]")
    assert not radii.is_floating_point(), changed(symbol, f"radii are {radii.dtype}, not integers")
    assert (radii[0, :2] > 0).all() and (radii[0, 2] == 0).all(), changed(symbol, f"culling: radii {radii[0].tolist()}")
    assert torch.allclose(means2d[0, 0], torch.tensor([32.0, 24.0])) and float(depths[0, 0]) == pytest.approx(3.0), \
        changed(symbol, f"means2d {means2d[0, 0].tolist()} / depth {float(depths[0, 0])} of a point on the axis")

    symbol = f"{TORCH_IMPL}._spherical_harmonics"
    coeffs = torch.zeros(n, 16, 3)
    coeffs[:, 0] = 1.0
    colors = gsplat_internals.spherical_harmonics(3, means, coeffs)
    assert tuple(colors.shape) == (n, 3), changed(symbol, f"returned shape {tuple(colors.shape)} for [N, 16, 3]")
    assert torch.allclose(colors, torch.full((n, 3), 0.28209479177387814)), changed(symbol, "the DC term is not C0")


# -- gsplat.strategy.ops: the MCMC helpers routed to the CPU -------------------------------------

ORIGINALS = {  # where gsplat.strategy.ops imports them from, with the parameters the adapter forwards
    "compute_relocation": (gsplat.relocation, "gsplat.relocation.compute_relocation",
                           ["opacities", "scales", "ratios", "binoms"]),
    "quat_scale_to_covar_preci": (gsplat, "gsplat.quat_scale_to_covar_preci",
                                  ["quats", "scales", "compute_covar", "compute_preci", "triu"]),
}


@pytest.mark.parametrize("name", sorted(gsplat_internals.MCMC_OPS_GLOBALS))
def test_mcmc_ops_globals_are_where_the_adapter_replaces_them(name: str) -> None:
    symbol = f"gsplat.strategy.ops.{name}"
    current = lookup(ops, name, symbol)
    module, original_symbol, expected = ORIGINALS[name]
    original = lookup(module, name, original_symbol)
    routed = getattr(current, "__qualname__", "").startswith("route_mcmc_ops_to_cpu.")
    assert current is original or routed, changed(symbol, f"it is no longer `{original_symbol}`")
    assert params(original)[:len(expected)] == expected, changed(
        original_symbol, f"its parameters are {params(original)}, the CPU dispatcher forwards {expected}")
    if routed:
        assert params(current) == params(original), changed(symbol, "the dispatcher's parameters differ")
    for caller in gsplat_internals.MCMC_OPS_GLOBALS[name]:
        caller_symbol = f"gsplat.strategy.ops.{caller}"
        fn = lookup(ops, caller, caller_symbol)
        assert name in inspect.unwrap(fn).__code__.co_names, changed(
            caller_symbol, f"it no longer calls the module global `{name}`, so routing it to the CPU has no effect")
        calls = called_keywords(fn, name)
        assert calls, changed(caller_symbol, f"it no longer calls `{name}(...)`")
        for kws in calls:
            assert kws <= set(expected), changed(
                caller_symbol, f"it calls `{name}` with keywords {sorted(kws - set(expected))} the dispatcher lacks")


def test_mcmc_ops_run_on_cpu_tensors_once_routed() -> None:
    enable_cpu_mcmc()
    enable_cpu_mcmc()  # idempotent
    binoms = MCMCStrategy().initialize_state().get("binoms")
    assert binoms is not None and torch.equal(binoms, binomials()), changed(
        "gsplat.strategy.MCMCStrategy.initialize_state", "its `binoms` table is no longer C(n, k) for n, k < 51")
    g = torch.Generator().manual_seed(0)
    opac = torch.rand(8, generator=g) * 0.9 + 0.05
    scales = torch.rand(8, 3, generator=g) + 0.1
    ratios = torch.randint(1, 5, (8,), generator=g)
    new_o, new_s = ops.compute_relocation(opacities=opac, scales=scales, ratios=ratios, binoms=binoms)
    want_o, want_s = relocation_torch(opac, scales, ratios, binoms)
    assert torch.equal(new_o, want_o) and torch.equal(new_s, want_s)
    quats = torch.nn.functional.normalize(torch.rand(8, 4, generator=g), dim=-1)
    covars, preci = ops.quat_scale_to_covar_preci(quats, scales, compute_covar=True, compute_preci=False, triu=False)
    assert preci is None and torch.equal(covars, _torch_impl._quat_scale_to_covar_preci(quats, scales, True, False)[0])


# -- DefaultStrategy's growth step ---------------------------------------------------------------

GROW = "gsplat.strategy.DefaultStrategy._grow_gs"


def test_default_strategy_grows_through_grow_gs() -> None:
    grow = lookup(DefaultStrategy, "_grow_gs", GROW)
    assert params(grow) == ["self", "params", "optimizers", "state", "step"], changed(GROW, f"parameters {params(grow)}")
    post = "gsplat.strategy.DefaultStrategy.step_post_backward"
    assert "_grow_gs" in inspect.unwrap(DefaultStrategy.step_post_backward).__code__.co_names, changed(
        post, "it no longer calls `self._grow_gs`, so the growth hook (and the Gaussian cap) is bypassed")
    code = inspect.unwrap(grow).__code__
    assert "grow_grad2d" in code.co_names, changed(GROW, "it no longer reads `self.grow_grad2d` when called")
    assert {"grad2d", "count"} <= set(code.co_consts), changed(GROW, "it no longer reads state['grad2d'] / state['count']")
    state = DefaultStrategy().initialize_state(scene_scale=1.0)
    assert {"grad2d", "count"} <= set(state), changed(
        "gsplat.strategy.DefaultStrategy.initialize_state", f"its state has keys {sorted(state)}")


def test_growth_hook_grows_above_the_threshold_given() -> None:
    """default_grow(grad_threshold=t) clones exactly the Gaussians whose mean gradient exceeds t."""
    n = 6
    params = torch.nn.ParameterDict({
        "means": torch.nn.Parameter(torch.zeros(n, 3)),
        "scales": torch.nn.Parameter(torch.full((n, 3), -5.0)),  # small: cloned, not split
        "quats": torch.nn.Parameter(torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1)),
        "opacities": torch.nn.Parameter(torch.zeros(n)),
    })
    optimizers = {k: torch.optim.Adam([p], lr=1e-3) for k, p in params.items()}
    strategy = gsplat_internals.DefaultStrategyGrowth(grow_grad2d=2e-4)
    state = strategy.initialize_state(scene_scale=1.0)
    state["grad2d"] = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]) * 1e-3
    state["count"] = torch.ones(n)
    assert torch.allclose(gsplat_internals.mean_grad2d(state), state["grad2d"])
    assert strategy.default_grow(params, optimizers, state, step=100, grad_threshold=4.5e-3) == (2, 0), changed(
        GROW, "it did not clone exactly the Gaussians above `grow_grad2d`")
    assert strategy.grow_grad2d == 2e-4 and len(params["means"]) == n + 2 and len(state["grad2d"]) == n + 2
    assert strategy._grow_gs(params, optimizers, state, step=100) == (n + 2, 0)  # the hook: gsplat's growth


# -- DefaultStrategy's opacity reset --------------------------------------------------------------

POST = "gsplat.strategy.DefaultStrategy.step_post_backward"
RESET = "gsplat.strategy.ops.reset_opa"


def test_reset_symbols_are_as_the_adapter_calls_them() -> None:
    post = lookup(DefaultStrategy, "step_post_backward", POST)
    assert params(post) == ["self", "params", "optimizers", "state", "step", "info", "packed"], changed(
        POST, f"parameters {params(post)}: DefaultStrategyGrowth.step_post_backward passes them on")
    reset = lookup(ops, "reset_opa", RESET)
    assert params(reset) == ["params", "optimizers", "state", "value"], changed(RESET, f"parameters {params(reset)}")


def reset_case(strategy: DefaultStrategy) -> tuple[torch.Tensor, dict[str, torch.optim.Adam], torch.Tensor]:
    """Run `strategy.step_post_backward` at step `reset_every` (no refinement then) on 4 opaque
    Gaussians whose Adam moments are non-zero; (opacities before, optimizers, opacities after)."""
    n = 4
    params = torch.nn.ParameterDict({
        "means": torch.nn.Parameter(torch.zeros(n, 3)),
        "scales": torch.nn.Parameter(torch.full((n, 3), -5.0)),
        "quats": torch.nn.Parameter(torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1)),
        "opacities": torch.nn.Parameter(torch.full((n,), 3.0)),  # sigmoid 0.95
    })
    optimizers = {k: torch.optim.Adam([p], lr=1e-3) for k, p in params.items()}
    params["opacities"].sum().backward()
    optimizers["opacities"].step()
    before = torch.sigmoid(params["opacities"].detach())
    state = strategy.initialize_state(scene_scale=1.0)
    means2d = torch.zeros(1, n, 2, requires_grad=True)
    means2d.sum().backward()
    info = {"width": 8, "height": 8, "n_cameras": 1, "radii": torch.ones(1, n, 2), "gaussian_ids": None,
            "means2d": means2d}
    strategy.step_post_backward(params, optimizers, state, strategy.reset_every, info)
    return before, optimizers, torch.sigmoid(params["opacities"].detach())


def test_gsplat_1_5_3_never_resets_opacities_itself() -> None:
    """gsplat 1.5.3's reset test `step % reset_every == 0 & step > 0` is always false; the day a
    release fixes it, its own reset would run beside `DefaultStrategyGrowth`'s: drop ours then."""
    strategy = DefaultStrategy(refine_start_iter=1000, refine_stop_iter=2000, reset_every=100)
    before, _, after = reset_case(strategy)
    assert torch.equal(after, before), changed(
        POST, "it now resets opacities itself: remove DefaultStrategyGrowth's reset (opacity_reset)")


def test_growth_strategy_resets_opacities_when_asked() -> None:
    on = gsplat_internals.DefaultStrategyGrowth(refine_start_iter=1000, refine_stop_iter=2000, reset_every=100,
                                                opacity_reset=True)
    _, optimizers, opacities = reset_case(on)
    assert torch.allclose(opacities, torch.full((4,), 2 * on.prune_opa))  # 3DGS: clamp to 2 x the prune threshold
    moments = optimizers["opacities"].state[optimizers["opacities"].param_groups[0]["params"][0]]
    assert not moments["exp_avg"].any() and not moments["exp_avg_sq"].any()  # Adam starts afresh
    off = gsplat_internals.DefaultStrategyGrowth(refine_start_iter=1000, refine_stop_iter=2000, reset_every=100)
    before, _, after = reset_case(off)
    assert torch.equal(after, before)
    late = gsplat_internals.DefaultStrategyGrowth(refine_start_iter=1000, refine_stop_iter=100, reset_every=100,
                                                  opacity_reset=True)
    assert reset_case(late)[2].min() > 0.9  # not at or after refine_stop_iter, as 3DGS


def test_opacity_reset_needs_room_to_recover() -> None:
    """The reset runs only where its interval (a quarter of the steps, at most 3000) leaves
    `MIN_RESET_INTERVAL` steps for the opacities to grow back."""
    def resets(steps: int, asked: bool = True) -> bool:
        return bool(make_strategy("default", steps, 1.0, 0, opacity_reset=asked)[0].opacity_reset)

    assert resets(7000) and resets(4 * MIN_RESET_INTERVAL) and resets(30000)
    assert not resets(4 * MIN_RESET_INTERVAL - 4) and not resets(300) and not resets(7000, asked=False)
