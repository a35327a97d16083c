"""Look inside a zoo model: Residual Jacobians and Residual Alignment (SPEC section 6).

    from zoo import analysis
    report = analysis.analyze_model(model, images, labels, k=8)   # RA1-RA4, refinement
    analysis.write_report(report, "out/")                         # metrics.json + PNGs

    op = analysis.JacobianOperator(fn, x)          # matrix-free J of fn at one sample x
    analysis.top_singular_triplets(op, k=4)        # subspace iteration on JVPs / VJPs
    analysis.dense_singular_triplets(op, k=4)      # exact, from the explicit Jacobian

    analysis.skip_path(model)                      # the composed skip path M_L ... M_1
    analysis.stream_rms(model, images)             # every unit's output RMS (signal propagation)

The per-backend autodiff (jvp, vjp) is in zoo.analysis.autodiff; matplotlib is imported only
when plotting.
"""

from zoo.analysis import metrics
from zoo.analysis.autodiff import grad, jvp, vjp
from zoo.analysis.jacobian import (
    DENSE_MAX_DIM,
    JacobianOperator,
    SingularTriplets,
    dense_singular_triplets,
    explicit_jacobian,
    singular_triplets,
    top_singular_triplets,
)
from zoo.analysis.skip_path import recurrent_skip_path, skip_matrix, skip_path, stream_rms
from zoo.analysis.residual_alignment import analyze_model, residual_units_of, unit_tensors, write_report
