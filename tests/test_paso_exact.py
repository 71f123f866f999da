"""PASO's scan reproduces serial training: converged guesses, and the helpers other tests share.

The bit-for-bit threshold-0 matrix lives in the equivalence matrix (tests/test_equivalence.py).

Why bitwise holds on any machine: PASO's window start steps with ``torch.optim``'s own
``step()`` after ``clip_grad_norm_`` on the model's gradients, on parameters of the same
shapes and alignment, with the same thread count (one per worker here). The reference is
computed in this process with ``torch.optim`` and the task's own data (not by the
``serial`` method), so the check is independent of the code under test.
"""

from __future__ import annotations

import torch

from paso_core.config import RunConfig, validate
from paso_core.equivalence import serial_reference
from paso_core.launch import launch_all

OPTIMIZERS = ["sgd", "momentum", "adam", "adamw"]
#: Every case warms up, decays (cosine) and clips (the clip is below the first gradient norms).
TASKS = {
    "synthetic": dict(task="synthetic", function="ackley", dim=300, steps=14, lr=0.02, grad_clip=0.2),
    "digits": dict(task="vision", dataset="digits", model="cnn", steps=10, batch_size=32, lr=0.01,
                   grad_clip=0.25),
}
SCHEDULE = dict(lr_schedule="cosine", warmup_steps=3, threads_per_worker=1)


def reference_trajectory(options: dict) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """Plain serial training with torch.optim (:func:`paso_core.equivalence.serial_reference`,
    written independently of paso_core.methods): the final state dict and the parameters
    (concatenated) before every step and after the last, on as many threads as one worker uses."""
    rows: list[torch.Tensor] = []
    _, final = serial_reference(validate(RunConfig.from_dict(dict(method="serial", **options))), rows)
    return final, rows


def reference_parameters(options: dict) -> dict[str, torch.Tensor]:
    return reference_trajectory(options)[0]


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def relative_l2(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """``||a - b|| / ||a||`` over all weights together.

    Why not an elementwise maximum: Adam divides by ``sqrt(v) + eps``, so an element whose
    gradient is near ``eps`` turns a rounding-level change of its gradient into a step of
    up to ``lr``; a handful of such elements say nothing about the trajectory as a whole.
    """
    assert a.keys() == b.keys()
    num = sum(float((a[k].double() - b[k].double()).square().sum()) for k in a)
    den = sum(float(a[k].double().square().sum()) for k in a)
    return (num / den) ** 0.5


#: When threshold 0 accepts more than one step (a guess that equals the rolled-out iterate
#: bit for bit, which extrapolated guesses sometimes do), the accepted steps come from the
#: scan and match serial to float32 rounding only: relative L2 bound for that case.
ROUNDING_RTOL = 1e-6


def assert_equals_serial(reference: dict[str, torch.Tensor], final: dict[str, torch.Tensor],
                         summary: dict, label: str = "") -> None:
    """Bitwise when every step was the exact torch.optim step (K = T), else to rounding."""
    if summary["iterations"] == summary["steps"]:
        assert max_abs_diff(reference, final) == 0.0, f"{label}: PASO differs from serial"
    else:
        assert relative_l2(reference, final) <= ROUNDING_RTOL, f"{label}: PASO differs from serial"


#: Float32 bound for a trajectory that went through the prefix scan: the scan composes the
#: same affine maps in another order, so each accepted window rounds differently from the
#: sequential steps (and the next window's first gradient is taken at that point); bounded
#: in relative L2 over all weights after 24 steps (measured here: 1e-7 for SGD and momentum,
#: 2e-7 for Adam, 2.4e-5 to 3.4e-5 for AdamW on two CPUs; the test prints its value).
SCAN_RTOL = 1e-3

#: Acceptance tolerance for converged guesses, in the engine's unit (mean squared difference
#: times 1e6). Chosen between two scales that do not depend on the CPU: a correct scan
#: differs from the guesses by float32 rounding (about 1e-6 for AdamW, the worst case: an
#: AMD EPYC measured 2e-6, which a tolerance of 1e-6 rejected), while a wrong scan (one step
#: off) differs by a whole step: guesses shifted by one step give errors of 1 to 300 over
#: the first 12 steps, so ``K`` grows from 6 to 19 (measured; only the last windows, where
#: the cosine schedule has taken lr near zero, fall below 1e-3). 1e-3 is 500 times the
#: rounding and 1000 times below the early whole-step errors.
CONVERGED_THRESHOLD = 1e-3


def test_converged_guesses_are_accepted_a_window_at_a_time(tmp_path) -> None:
    """Guesses seeded from the serial trajectory converge at once: the scan's iterates are
    accepted ``P`` steps per iteration (``K = ceil(T/P)``) and the run ends on serial's
    weights. A wrong scan (e.g. step index off by one) makes the errors large, so every
    iteration accepts one step and ``K = T``. The four optimizers share one launch."""
    P, configs, references = 4, [], {}
    for optimizer in OPTIMIZERS:
        options = dict(TASKS["digits"], **SCHEDULE, steps=24, optimizer=optimizer, seed=1, progress=False)
        references[optimizer], rows = reference_trajectory(options)
        torch.save(torch.stack(rows), tmp_path / f"{optimizer}.pt")
        configs.append(RunConfig.from_dict(dict(
            options, method="paso", P=P, threshold=CONVERGED_THRESHOLD, ema_decay=1.0, init="trajectory",
            init_trajectory=str(tmp_path / f"{optimizer}.pt"), out_dir=str(tmp_path / optimizer))))
    for optimizer, result in zip(OPTIMIZERS, launch_all(configs)):
        accepted = list(result.metrics["accepted"].dropna())
        assert result.summary["iterations"] == -(-result.summary["steps"] // P), (optimizer, accepted)
        final = torch.load(result.path / "final.pt", weights_only=True)
        diff = relative_l2(references[optimizer], final)
        print(f"{optimizer}: ||paso - serial|| / ||serial|| = {diff:.3g} after K = {result.summary['iterations']}")
        assert diff <= SCAN_RTOL, optimizer
