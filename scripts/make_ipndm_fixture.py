#!/usr/bin/env python3
"""Writes tests/fixtures/ipndm/reference.json: iPNDM as the diff-solvers reference runs it.

sampler-core's iPNDM (`solver::ipndm`, `ipndm_to_min`) is held to the reference code that
the field's few-step tables use: `ipndm_sampler` of zju-pi/diff-sampler's
`diff-solvers-main/solvers.py`, run here from a checkout the caller gives (its code is
never copied into this repository). The network is a single Gaussian N(mu, c^2) in every
dimension, whose exact denoiser D(x, s) = (c^2 x + s^2 mu) / (c^2 + s^2) is linear, computed
in float64; the latents are fixed numbers. For each T the script records the reference's
levels (its polynomial rho = 7 schedule, as float64), the noise, and two outputs:

* `to_min`: `ipndm_sampler(num_steps=T)`: T - 1 multistep updates over the T levels, ending
  at the state at s_min (T - 1 evaluations);
* `denoise_to_zero`: the same with `denoise_to_zero=True`: one more evaluation,
  x_T = D(x_{T-1}, s_min) (T evaluations);
* `multistep_to_zero`: the reference on the T levels followed by 0 (`t_steps=`): its
  Adams-Bashforth update carried through the last step to s = 0 (T evaluations, what
  fewstep's `solver::ipndm` does; docs/method.md §2 says why).

Run (venv as in make_fid_fixture.py; any torch):

    /tmp/torchvenv/bin/python scripts/make_ipndm_fixture.py /path/to/diff-sampler/diff-solvers-main
"""

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "ipndm" / "reference.json"
MU, C = 0.4, 0.7
EPS = [1.3, -0.4, 0.05, -2.1]
TS = [3, 4, 5, 8, 10]


class Gaussian(torch.nn.Module):
    """The exact denoiser of N(MU, C^2), called as the reference calls a network."""

    def forward(self, x, t, class_labels=None):
        return (C * C * x + t * t * MU) / (C * C + t * t)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.path.insert(0, str(Path(sys.argv[1]).resolve()))
    import solvers  # noqa: E402  (the reference, from the caller's checkout)
    from solver_utils import get_schedule  # noqa: E402

    torch.set_default_dtype(torch.float64)
    net = Gaussian()
    latents = torch.tensor([EPS], dtype=torch.float64)
    cases = {}
    for t in TS:
        levels = get_schedule(t, 0.002, 80.0, schedule_type="polynomial", schedule_rho=7)
        run = lambda zero: solvers.ipndm_sampler(  # noqa: E731
            net, latents, num_steps=t, sigma_min=0.002, sigma_max=80.0,
            schedule_type="polynomial", schedule_rho=7, denoise_to_zero=zero)[0].tolist()
        to_zero = torch.cat([levels.double(), torch.zeros(1, dtype=torch.float64)])
        multistep = solvers.ipndm_sampler(net, latents, t_steps=to_zero)[0].tolist()
        cases[str(t)] = {"levels": levels.double().tolist(), "to_min": run(False),
                         "denoise_to_zero": run(True), "multistep_to_zero": multistep}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    doc = {"source": "zju-pi/diff-sampler diff-solvers-main/solvers.py ipndm_sampler "
                     "(max_order 4), float64",
           "mu": MU, "c": C, "eps": EPS, "s_max": 80.0, "cases": cases}
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}: T = {TS}")


if __name__ == "__main__":
    main()
