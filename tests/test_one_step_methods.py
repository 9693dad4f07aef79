"""The rivals' shared pieces: the flow schedule against an oracle velocity, the new sampler
names, Consistency Policy's grid and boundary, the two-time warm start, and one training
iteration of each method on a tiny real policy (encoders + U-Net)."""

from __future__ import annotations

import pytest
import torch

from onedp_control.config import from_dict
from onedp_control.diffusion.schedules import DDPMSchedule, FlowSchedule
from onedp_control.errors import ConfigError
from onedp_control.policies import consistency, imle, ofp
from onedp_control.policies.diffusion import DiffusionPolicy, ModelConfig, Sampler, run_sampler
from onedp_control.policies.two_time import TwoTimePolicy, two_time_output, warm_start
from tests.conftest import TINY_MODEL
from tests.conftest import TINY_MODEL_FIELDS as TINY

X0 = torch.tensor([[[0.3, -0.5, 0.8]]])  # a point mass: the exact velocity field is known


def oracle_velocity(schedule: FlowSchedule, calls: list):
    """v(x, t) = (X0 - x) / (1 - t): the straight path to the point mass."""

    def net(x, level, cond):
        calls.append(1)
        t = (level / schedule.level_scale).reshape(-1, 1, 1)
        return (X0 - x) / (1 - t)

    return net


def tiny(schedule: str, cls=DiffusionPolicy) -> DiffusionPolicy:
    torch.manual_seed(0)
    return cls(from_dict(ModelConfig, {**TINY, "schedule": schedule}, "test"))


def tiny_batch(size: int = 3) -> dict:
    generator = torch.Generator().manual_seed(1)
    config = TINY_MODEL
    frames = (size, config.obs_horizon, 3, *config.image_size)
    return {
        "images": {c: torch.rand(frames, generator=generator) for c in config.cameras},
        "low_dim": torch.rand(size, config.obs_horizon, config.low_dim, generator=generator),
        "action": torch.rand(size, config.horizon, config.action_dim, generator=generator) * 2 - 1,
    }


def test_flow_schedule_is_exact_for_a_point_mass():
    schedule = FlowSchedule()
    noise = torch.randn(4, 1, 3, generator=torch.Generator().manual_seed(0))
    for count in (1, 7):
        calls = []
        out = schedule.sample_euler(oracle_velocity(schedule, calls), noise, None, count)
        torch.testing.assert_close(out, X0.expand(4, 1, 3))
        assert len(calls) == count
    t = torch.tensor([0.0, 0.3, 0.6, 0.9])
    xt, sigma = schedule.diffuse(X0.expand(4, 1, 3), t, noise)
    torch.testing.assert_close(sigma, 1 - t)
    net = oracle_velocity(schedule, [])
    torch.testing.assert_close(schedule.x0(net, xt, t, None), X0.expand(4, 1, 3))
    torch.testing.assert_close(schedule.eps(net, xt, t, None), noise)
    generator = torch.Generator().manual_seed(3)
    assert float(schedule.loss(net, X0.expand(8, 1, 3), None, generator)) < 1e-10


def test_sampler_names_for_flow_and_consistency():
    assert Sampler.parse("euler50") == Sampler("euler", 50)
    assert (Sampler.parse("euler50").label, Sampler.parse("euler50").nfe) == ("euler50", 50)
    assert (Sampler.parse("cp3").label, Sampler.parse("cp3").nfe) == ("cp3", 3)
    with pytest.raises(ConfigError, match="needs a step count"):
        Sampler.parse("euler")
    schedule, noise = FlowSchedule(), torch.randn(2, 1, 3)
    out = run_sampler(schedule, oracle_velocity(schedule, []), noise, None, Sampler("euler", 5))
    torch.testing.assert_close(out, X0.expand(2, 1, 3))
    with pytest.raises(ConfigError, match="does not apply to a DDPM teacher"):
        run_sampler(DDPMSchedule(), None, noise, None, Sampler("euler", 5))
    with pytest.raises(ConfigError, match="does not apply to a FLOW teacher"):
        run_sampler(schedule, None, noise, None, Sampler("ddim", 5))


def test_consistency_grid_chain_and_boundary():
    config = consistency.ConsistencyConfig()
    sigmas = consistency.bin_sigmas(config)
    assert len(sigmas) == 81 and torch.all(sigmas[1:80] < sigmas[:79])
    torch.testing.assert_close(sigmas[[0, 79, 80]], torch.tensor([80.0, 0.02, 0.02]))
    torch.testing.assert_close(consistency.chain_sigmas(config, 3), sigmas[[0, 27, 54]])
    student = tiny("edm", TwoTimePolicy)
    x = torch.randn(2, 16, 10)
    cond = torch.randn(2, 2 * student.encoder.frame_dim)
    sigma_min = torch.full((2,), 0.02)
    # G(x, sigma_min, sigma_min) = x: the boundary condition the CTM scalings build in.
    torch.testing.assert_close(consistency.jump(student, config, x, sigma_min, sigma_min, cond), x)


def test_two_time_student_starts_as_its_teacher():
    teacher, student = tiny("edm"), tiny("edm", TwoTimePolicy)
    torch.manual_seed(5)
    warm_start(student, teacher)
    x, cond = torch.randn(2, 16, 10), torch.randn(2, 2 * teacher.encoder.frame_dim)
    level, second = torch.tensor([0.3, -0.2]), torch.tensor([-1.0, 0.5])
    torch.testing.assert_close(
        two_time_output(student, x, level, second, cond), teacher.unet(x, level, cond)
    )
    wider = DiffusionPolicy(from_dict(ModelConfig, {**TINY, "down_dims": [16, 48]}, "test"))
    with pytest.raises(ConfigError, match="do not fit the student"):
        warm_start(student, wider)
    with pytest.raises(ConfigError, match="OFP needs model"):
        tiny("edm", ofp.OneStepFlowPolicy)


def test_each_method_trains_one_iteration_on_the_real_network():
    batch, rng = tiny_batch(), torch.Generator().manual_seed(2)
    edm_teacher = tiny("edm")
    student = tiny("edm", TwoTimePolicy)
    warm_start(student, edm_teacher)
    cp_config = consistency.ConsistencyConfig()
    cp = consistency.ConsistencyDistiller(edm_teacher, student, cp_config)
    assert set(cp.step(batch, rng)) == {"ctm", "dsm"}
    assert all(not p.requires_grad for p in cp.student.encoder.parameters())  # C1 freezes it
    cond = cp.student.encode(batch)
    chunk = consistency.generate(cp.student, cp_config, cond, torch.randn(3, 16, 10))
    chunk3 = consistency.generate(
        cp.student, cp_config, cond, torch.randn(3, 16, 10), torch.randn(3, 2, 16, 10)
    )
    assert chunk.shape == chunk3.shape == (3, 16, 10)

    flow_teacher = tiny("flow")
    imle_config = imle.IMLEConfig(teacher_set_size=4, hypotheses=3, teacher_steps=2)
    with torch.no_grad():
        batch["teacher_set"] = imle.teacher_set(
            flow_teacher, imle_config, flow_teacher.encode(batch), rng
        )
    assert batch["teacher_set"].shape == (3, 4, 16, 10)
    distiller = imle.IMLEDistiller(flow_teacher, imle_config)
    assert set(distiller.step(batch, rng)) == {"coverage", "fidelity"}
    with pytest.raises(ConfigError, match="IMLE distils a flow teacher"):
        imle.IMLEDistiller(edm_teacher, imle_config)

    trainer = ofp.OneStepFlowTrainer(tiny("flow", ofp.OneStepFlowPolicy), ofp.OFPConfig(), 10)
    assert set(trainer.step(batch, rng)) == {"flow", "consistency"}  # 3 rows: no guidance row
    assert trainer.contraction() == pytest.approx(0.9)
    with torch.no_grad():
        chunk = ofp.generate(trainer.model, trainer.model.encode(batch), torch.randn(3, 16, 10))
    assert chunk.shape == (3, 16, 10) and float(chunk.abs().max()) <= 1


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (consistency.ConsistencyConfig(sigma_min=0.0), "sigma_min"),
        (imle.IMLEConfig(hypotheses=0), "set sizes"),
        (ofp.OFPConfig(consistency_share=1.0), "consistency_share"),
    ],
)
def test_bad_method_configs_are_named(config, message):
    with pytest.raises(ConfigError, match=message):
        config.validate("test")
