"""ResNet residual units: basic and bottleneck, five activation placements, any skip mapping.

    y = M(shortcut(x)) + DropPath(F(x))

Placements are He et al. 2016 (arXiv 1603.05027) Fig. 4, written for a branch of convs
c_1..c_n (n = 2 basic, 3 bottleneck: 1x1, 3x3, 1x1 with expansion 4):

    original         c_i BN ReLU ... c_n BN, add, ReLU          (post-activation, He 2015)
    bn_after_add     c_i BN ReLU ... c_n, add, BN, ReLU
    relu_before_add  c_i BN ReLU ... c_n BN ReLU, add
    relu_preact      ReLU c_i BN ... ReLU c_n BN, add
    full_preact      BN ReLU c_i ... BN ReLU c_n, add           (pre-activation, He 2016)

Where the branch changes the shape (stride or width) the shortcut is a projection (1x1 conv
stride s, + BN in the post-activation placements; He et al. option B) or, with
`downsample="pad"`, option A: every s-th pixel and zero channels, no parameters. In the
pre-activation placements the shortcut of a shape-changing unit starts from the pre-activated
input, as in the authors' code. The skip mapping M acts after the projection.
"""

import keras
from keras import layers, ops

from zoo.errors import check_choice, check_range
from zoo.layers import grad_plan
from zoo.layers.norm import batch_normalization
from zoo.layers.unit import BaseResidualUnit

PLACEMENTS = ("original", "bn_after_add", "relu_before_add", "relu_preact", "full_preact")
PREACT_PLACEMENTS = ("relu_preact", "full_preact")
BLOCKS = ("basic", "bottleneck")
DOWNSAMPLES = ("projection", "pad")
BN_MOMENTUM = 0.9  # PyTorch's momentum 0.1 in Keras' convention
BN_EPSILON = 1e-5


@keras.saving.register_keras_serializable(package="zoo")
class Conv2D(layers.Conv2D):
    """`keras.layers.Conv2D` that keeps channels-last tensors channels-last on the torch backend.

    Keras' torch convolution copies every NHWC input to a contiguous NCHW tensor, converts it
    back to channels-last memory and transposes the output again: three copies a conv, about a
    tenth of a ResNet-20 training step on this CPU. An NHWC tensor seen through
    `permute(0, 3, 1, 2)` already is an NCHW tensor in torch's channels-last memory format, which
    its convolutions take and return as they are, so here the conv is `torch.nn.functional.conv2d`
    on those views, without copies. Other backends, grouped or strided "same" convs, and
    channels-first data take Keras' own path. The class keeps Keras' name, so weight files name
    its place as they name a Keras Conv2D's.

    On jax and tensorflow, inside a DropPathFreeze step's gradient plan (zoo.layers.grad_plan),
    the conv computes its weight and input gradients only where the step needs them.
    """

    def convolution_op(self, inputs, kernel):
        backend = keras.backend.backend()
        plain = self.data_format != "channels_last" or self.groups != 1
        plan = grad_plan.current() if backend in ("jax", "tensorflow") and not plain else None
        if plan is not None:  # a DropPathFreeze step's plan: gradients only where the step needs them
            return grad_plan.gated_conv(inputs, kernel, plan, self.strides, self.padding, self.dilation_rate)
        if backend != "torch" or plain or (self.padding == "same" and max(self.strides) > 1):
            return super().convolution_op(inputs, kernel)
        import torch.nn.functional as F

        x = ops.convert_to_tensor(inputs).permute(0, 3, 1, 2)  # a view: NCHW in channels-last memory
        w = ops.convert_to_tensor(kernel).permute(3, 2, 0, 1)  # HWIO -> OIHW, a view
        padding = 0 if self.padding == "valid" else "same"
        out = F.conv2d(x, w, stride=self.strides, padding=padding, dilation=self.dilation_rate)
        return out.permute(0, 2, 3, 1)


@keras.saving.register_keras_serializable(package="zoo")
class SymmetricConv2D(Conv2D):
    """Conv2D with PyTorch's symmetric padding (k // 2 on every side) for strided convs.

    Keras' "same" pads the bottom/right more than the top/left when the stride is 2; padding
    explicitly keeps outputs equal to the PyTorch models whose weights the zoo imports.
    """

    def __init__(self, filters, kernel_size, strides=1, **kwargs):
        kwargs["padding"] = "valid"
        super().__init__(filters, kernel_size, strides=strides, **kwargs)

    def call(self, x):
        ph, pw = self.kernel_size[0] // 2, self.kernel_size[1] // 2
        x = ops.pad(x, [[0, 0], [ph, ph], [pw, pw], [0, 0]])
        return super().call(x)

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        ph, pw = self.kernel_size[0] // 2, self.kernel_size[1] // 2
        return super().compute_output_shape(
            (b, None if h is None else h + 2 * ph, None if w is None else w + 2 * pw, c)
        )


def conv2d(filters, kernel_size, stride=1, name=None, kernel_initializer="he_normal", dtype=None):
    """A bias-free conv: symmetric padding when strided (see SymmetricConv2D), else "same"."""
    if kernel_size > 1 and stride > 1:
        return SymmetricConv2D(
            filters, kernel_size, strides=stride, use_bias=False,
            kernel_initializer=kernel_initializer, name=name, dtype=dtype,
        )
    return Conv2D(
        filters, kernel_size, strides=stride, padding="same", use_bias=False,
        kernel_initializer=kernel_initializer, name=name, dtype=dtype,
    )


def batch_norm(name, gamma_initializer="ones", dtype=None):
    return batch_normalization(
        momentum=BN_MOMENTUM, epsilon=BN_EPSILON, gamma_initializer=gamma_initializer, name=name, dtype=dtype
    )


def pad_shortcut(x, stride, out_channels):
    """He et al. option A: keep every `stride`-th pixel, zero-pad the new channels evenly."""
    if stride > 1:
        x = x[:, ::stride, ::stride, :]
    extra = out_channels - x.shape[-1]
    if extra:
        x = ops.pad(x, [[0, 0], [0, 0], [0, 0], [extra // 2, extra - extra // 2]])
    return x


@keras.saving.register_keras_serializable(package="zoo")
class ResidualUnit(BaseResidualUnit):
    """One ResNet unit on channels-last feature maps.

    Args:
        filters: width of the 3x3 conv(s); the unit outputs `filters` channels (basic) or
            `4 * filters` (bottleneck).
        block: "basic" (3x3, 3x3) or "bottleneck" (1x1, 3x3, 1x1; stride on the 3x3).
        stride: spatial stride of the unit.
        placement: one of PLACEMENTS.
        skip, skip_options: the skip mapping M, by registered name, and its options.
        downsample: "projection" or "pad", the shortcut where the shape changes.
        drop_path_rate, drop_path_granularity: DropPath on the branch.
        zero_init_last: start the branch's last scale (BN gamma, or the last conv without BN
            after it) at zero, so the unit starts as y = M(x).
        index: the unit's position in its model; offsets the seeds of the skip and DropPath.
        num_units: residual units on the model's skip path; the skip mapping scales its
            strength by it (`depth` of zoo.layers.skip), so the composed path stays bounded.
        shared_preact: in a pre-activation placement, the shortcut starts from the
            pre-activated input too (as it always does where the shape changes): He et al.
            2016's appendix does this for the first unit, after the stem conv, "before
            splitting into two paths".

    Input (B, H, W, C_in) -> output (B, H / stride, W / stride, C_out).
    """

    def __init__(
        self,
        filters,
        block="basic",
        stride=1,
        placement="original",
        skip="identity",
        skip_options=None,
        downsample="projection",
        drop_path_rate=0.0,
        drop_path_granularity="sample",
        zero_init_last=False,
        index=0,
        num_units=1,
        shared_preact=False,
        **kwargs,
    ):
        super().__init__(
            skip=skip,
            skip_options=skip_options,
            drop_path_rate=drop_path_rate,
            drop_path_granularity=drop_path_granularity,
            index=index,
            num_units=num_units,
            **kwargs,
        )
        # === Validation ===
        self.filters = int(check_range("filters", filters, low=1, integer=True))
        self.block = check_choice("block", block, BLOCKS)
        self.stride = int(check_range("stride", stride, low=1, integer=True))
        self.placement = check_choice("placement", placement, PLACEMENTS)
        self.downsample = check_choice("downsample", downsample, DOWNSAMPLES)
        self.zero_init_last = bool(zero_init_last)
        self.shared_preact = bool(shared_preact)
        self.out_channels = self.filters * (4 if block == "bottleneck" else 1)

        # === Layers (built in build_branch) ===
        if block == "basic":
            specs = [(self.filters, 3, self.stride), (self.filters, 3, 1)]
        else:
            specs = [(self.filters, 1, 1), (self.filters, 3, self.stride), (self.out_channels, 1, 1)]
        n = len(specs)
        last_is_conv = placement in ("bn_after_add", "full_preact")  # no BN right after c_n
        zero = "zeros" if self.zero_init_last else None
        dtype = self.dtype_policy
        self.convs = [
            conv2d(
                f,
                k,
                s,
                name=f"conv{i + 1}",
                kernel_initializer=(zero if (i == n - 1 and last_is_conv and zero) else "he_normal"),
                dtype=dtype,
            )
            for i, (f, k, s) in enumerate(specs)
        ]
        self.norms = [
            batch_norm(
                f"bn{i + 1}",
                gamma_initializer=(zero if (i == n - 1 and not last_is_conv and zero) else "ones"),
                dtype=dtype,
            )
            for i in range(n - 1 if placement == "bn_after_add" else n)
        ]
        self.post_norm = batch_norm("bn_out", dtype=dtype) if placement == "bn_after_add" else None
        self.projection = None
        self.projection_norm = None

    def residual_shape(self, input_shape):
        shape = tuple(input_shape)
        for conv in self.convs:
            shape = conv.compute_output_shape(shape)
        return tuple(shape)

    def build_branch(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(
                f"ResidualUnit takes channels-last feature maps (batch, height, width, channels) "
                f"with known channels; received input shape {tuple(input_shape)}."
            )
        input_shape = tuple(input_shape)
        in_channels = input_shape[-1]
        self.needs_shortcut_change = self.stride > 1 or in_channels != self.out_channels
        if self.needs_shortcut_change and self.downsample == "projection":
            self.projection = Conv2D(
                self.out_channels,
                1,
                strides=self.stride,
                use_bias=False,
                kernel_initializer="he_normal",
                name="projection",
                dtype=self.dtype_policy,
            )
            if self.placement not in PREACT_PLACEMENTS:
                self.projection_norm = batch_norm("projection_bn", dtype=self.dtype_policy)
        # The branch's sublayers, in the order the placement runs them.
        shape = input_shape
        for i, conv in enumerate(self.convs):
            if self.placement == "full_preact":  # BN before each conv
                self.norms[i].build(shape)
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
            if self.placement != "full_preact" and i < len(self.norms):  # BN after the conv
                self.norms[i].build(shape)
        if self.post_norm is not None:
            self.post_norm.build(shape)
        if self.projection is not None:
            self.projection.build(input_shape)
            if self.projection_norm is not None:
                self.projection_norm.build(self.projection.compute_output_shape(input_shape))

    def shortcut(self, x, training=None):
        if not self.needs_shortcut_change:
            return x
        if self.downsample == "pad":
            return pad_shortcut(x, self.stride, self.out_channels)
        x = self.projection(x)
        if self.projection_norm is not None:
            x = self.projection_norm(x, training=training)
        return x

    def branch(self, x, training=False):
        """F(x), the residual branch alone: (B, H, W, C_in) -> (B, H / stride, W / stride, C_out).

        The same code path as `call` (which uses it), before any branch scale a gating mapping
        imposes and before DropPath: the map whose Jacobian the Residual Alignment analysis
        studies (zoo.analysis).
        """
        return self._branch_and_shortcut_input(x, training=training)[0]

    def branch_and_shortcut(self, x, training=None):
        x, shortcut = self._branch_and_shortcut_input(x, training=training)
        return x, self.shortcut(shortcut, training=training)

    def shortcut_only(self, x, training=None):
        """The shortcut without the branch: the pre-activation where the shortcut starts from it."""
        if self.placement in PREACT_PLACEMENTS and (self.needs_shortcut_change or self.shared_preact):
            x = ops.relu(self.norms[0](x, training=training) if self.placement == "full_preact" else x)
        return self.shortcut(x, training=training)

    def _branch_and_shortcut_input(self, x, training=None):
        """(F(x), the tensor the shortcut starts from): the pre-activated input in the
        pre-activation placements when the shape changes (as in the authors' code), else x."""
        p = self.placement
        n = len(self.convs)
        shortcut = x
        if p == "full_preact":
            x = ops.relu(self.norms[0](x, training=training))
            if self.needs_shortcut_change or self.shared_preact:
                shortcut = x
        elif p == "relu_preact":
            x = ops.relu(x)
            if self.needs_shortcut_change or self.shared_preact:
                shortcut = x
        for i, conv in enumerate(self.convs):
            if p == "full_preact":
                if i > 0:
                    x = ops.relu(self.norms[i](x, training=training))
                x = conv(x)
            elif p == "relu_preact":
                if i > 0:
                    x = ops.relu(x)
                x = self.norms[i](conv(x), training=training)
            else:
                x = conv(x)
                last = i == n - 1
                if p == "bn_after_add" and last:
                    continue
                x = self.norms[i](x, training=training)
                if not last or p == "relu_before_add":
                    x = ops.relu(x)
        return x, shortcut

    def after_add(self, y, training=None):
        if self.placement == "bn_after_add":
            return ops.relu(self.post_norm(y, training=training))
        if self.placement == "original":
            return ops.relu(y)
        return y

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "block": self.block,
            "stride": self.stride,
            "placement": self.placement,
            "downsample": self.downsample,
            "zero_init_last": self.zero_init_last,
            "shared_preact": self.shared_preact,
        }
