"""Probe: the bundled model's networks on one pair's network inputs, as they run today and with
CPU-side variants (channels-last memory, a frozen TorchScript graph, inter-op parallelism of the
two localisers), each timed interleaved with the reference conv3d of benchmarks/benchmark_inference.py
and checked against today's outputs (largest difference).

    python research/speed/networks_probe.py DATA [--threads 2] [--runs 20]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from labelreg.engine import RegistrationEngine
from labelreg.io import read_image


def timed(fn, runs):
    for _ in range(3):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    fixed = read_image(data / "fixed_images" / "obs000.nii.gz")
    moving = read_image(data / "moving_images" / "obs000.nii.gz")
    engine = RegistrationEngine(None, "cpu")
    model = engine.model
    with torch.inference_mode():
        fixed_t, moving_t, _ = engine._normalised([(fixed, moving, None)])
        grids = {role: model.localiser_grid(v.grid, role) for role, v in (("fixed", fixed), ("moving", moving))}
        from labelreg.warp import sample

        inputs = {role: sample(t, v.grid, grids[role].points_lps()[None])
                  for role, t, v in (("fixed", fixed_t, fixed), ("moving", moving_t, moving))}
        net_grid = model.network_grid(fixed.grid)
        local_in = torch.randn(1, 2, *net_grid.shape_zyx)
        conv = torch.nn.Conv3d(16, 16, 3, padding=1)
        x = torch.randn(1, 16, 32, 32, 32)
        reference = timed(lambda: conv(x), args.runs)
        nets = {"localiser fixed": (model.localisers["fixed"], inputs["fixed"]),
                "localiser moving": (model.localisers["moving"], inputs["moving"]),
                "local net": (model.local_net, local_in)}
        print(f"reference conv3d: {reference * 1000:.2f} ms; inputs: fixed {tuple(inputs['fixed'].shape)}, "
              f"moving {tuple(inputs['moving'].shape)}, local {tuple(local_in.shape)}")
        for name, (net, inp) in nets.items():
            base_out = net(inp)
            base = timed(lambda net=net, inp=inp: net(inp), args.runs)
            line = f"{name:18s} today {base * 1000:7.1f} ms ({base / reference:5.1f} x ref)"
            cl_net = net.to(memory_format=torch.channels_last_3d)
            cl_in = inp.contiguous(memory_format=torch.channels_last_3d)
            cl = timed(lambda cl_net=cl_net, cl_in=cl_in: cl_net(cl_in), args.runs)
            diff = (cl_net(cl_in) - base_out).abs().max().item()
            net.to(memory_format=torch.contiguous_format)
            line += f" | channels-last {cl * 1000:7.1f} ms (diff {diff:.1e})"
            with torch.jit.optimized_execution(True):
                frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(net.eval(), inp)))
                jit = timed(lambda frozen=frozen, inp=inp: frozen(inp), args.runs)
                diff = (frozen(inp) - base_out).abs().max().item()
            line += f" | frozen TorchScript {jit * 1000:7.1f} ms (diff {diff:.1e})"
            print(line, flush=True)
        both = timed(lambda: [model.localisers[r](inputs[r]) for r in ("fixed", "moving")], args.runs)

        def forked():
            futures = [torch.jit.fork(model.localisers[r], inputs[r]) for r in ("fixed", "moving")]
            return [torch.jit.wait(f) for f in futures]

        fork = timed(forked, args.runs)
        print(f"both localisers: one after the other {both * 1000:.1f} ms, forked {fork * 1000:.1f} ms")


if __name__ == "__main__":
    main()
