"""What the DropPathFreeze step could save at best, counted in work units (issue #17).

    python -m bench.dpf_ideal                     # ResNet-20 and ResNet-56 at rate 0.2
    python -m bench.dpf_ideal --units 9 --rate 0.3

The count: every residual unit costs 1 for its forward pass, 1 for its input gradient and 1 for
its weight gradient; the stem, the head, the loss and the optimizer cost nothing, and so do the
step's own masks, copies and conditionals. Unit l of L has DropPath rate `rate * l / (L - 1)`
(the zoo's linear schedule, `linear_drop_path_rates`), one decision per unit per step (batch
granularity), and an A step is followed by its B step (`freeze_every=1`):

- a pair whose mask drops nothing is two plain steps (3L each);
- an A step that drops d units costs 3 (L - d);
- its B step runs every forward pass (L), the input gradient of every unit above the lowest
  dropped one (L - 1 - k, k counted from 0) and the weight gradients of the d dropped units.

The expectations are exact (no sampling): P(the lowest dropped unit is k) = p_k prod_{i<k}(1 - p_i)
and E[d | k] = 1 + sum_{i>k} p_i. The count says how far a measured DropPathFreeze / plain ratio
is from what skipping work can give at all; real steps also spend time in the parts it counts
as free.
"""

import argparse

from zoo.layers.drop_path import linear_drop_path_rates


def ideal(units, rate):
    """{"none": P(a mask drops nothing), "a": mean A-step cost / plain, "b": mean B-step cost /
    plain (both over masks that drop something), "mean_step": mean step cost / plain, "speedup":
    plain / mean step} for `units` residual units at DropPath rate `rate`."""
    p = [float(r) for r in linear_drop_path_rates(rate, units)]
    plain = 3.0 * units
    none = 1.0  # P(no unit up to the current one is dropped)
    a = b = 0.0
    for k, pk in enumerate(p):
        lowest = pk * none  # unit k is dropped, none below it is
        none *= 1.0 - pk
        dropped = 1.0 + sum(p[k + 1:])  # expected number dropped, given k is the lowest
        a += lowest * (plain - 3.0 * dropped)
        b += lowest * (units + (units - 1 - k) + dropped)
    some = 1.0 - none
    mean_step = (none * 2 * plain + a + b) / (2 * plain)
    return {"none": none, "a": a / some / plain if some else 1.0, "b": b / some / plain if some else 1.0,
            "mean_step": mean_step, "speedup": 1.0 / mean_step}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", type=int, nargs="*", default=[9, 27], help="residual units (ResNet-20: 9, -56: 27)")
    parser.add_argument("--rate", type=float, default=0.2, help="DropPath rate of the last unit")
    args = parser.parse_args(argv)
    print("| units | rate | masks dropping nothing | A step (drops) / plain | B step / plain | mean step / plain | ideal DropPathFreeze / plain |")
    print("|---|---|---|---|---|---|---|")
    for units in args.units:
        r = ideal(units, args.rate)
        print(f"| {units} | {args.rate} | {r['none']:.3f} | {r['a']:.3f} | {r['b']:.3f} | {r['mean_step']:.3f} | {r['speedup']:.3f} |")


if __name__ == "__main__":
    main()
