"""lmlab's own AVX2 kernels (lmlab.native): int4 and int8 weight products equal a float32 product
with the layer's dequantized weight (int4: to int16 rounding of the input, 2**-16 of each 32
columns' largest value; int8: to summation order) for every row count (decode, batches, the
prefill path above 16 rows), every group size and ragged output rows; layers take them for
decoding rows (and every row where torch's kernels lack AVX-512), keep the portable layout,
compile, and a failed build leaves torch's kernels in charge. `int4_quantize` gives bit for bit
what `int4_params` does, `int4_dequantize` the layer's weight, and long prompts on CPUs with native
bf16 take a bf16 product of the dequantized weight."""

from __future__ import annotations

import platform

import pytest
import torch
from kernel_paths import spy, use_path

from lmlab import kernels, native
from lmlab.generate import generate
from lmlab.quantized import Int4Linear, Int8Linear

pytestmark = pytest.mark.usefixtures("one_thread")

ROWS = [1, 2, 3, 4, 5, 8, 16, 17, 40]  # 17 and 40 take the tiled prefill path
# (out, in, group): out = 38 leaves 2 rows after the 4-row blocks, 37 one after the 2-row blocks
SHAPES = [(64, 128, 32), (38, 256, 64), (37, 384, 128), (96, 96, 32)]


def test_the_kernels_build_and_pass_their_probe_wherever_they_can():
    """On x86-64 with AVX2, FMA and a C++ compiler (CI's machines, users' laptops) the kernels
    must be used: a wrong result fails the probe, which would otherwise only skip the tests."""
    have = set(kernels.cpu_features())
    try:
        native.compiler()
    except RuntimeError as e:
        pytest.skip(str(e))
    if platform.machine() not in ("x86_64", "AMD64") or not {"avx2", "fma"} <= have:
        pytest.skip("lmlab's kernels need an x86-64 CPU with AVX2 and FMA")
    kernels.reset()
    assert kernels.probe()["native_gemv"] == ""


@pytest.fixture
def native_only(monkeypatch):
    """lmlab's kernels for every row count: torch's (chosen for batches on AVX-512) off."""
    kernels.reset()
    use_path("fast", "native_gemv", monkeypatch)
    monkeypatch.setenv(kernels.ENV, "-int4_weight_only,-int8_weight_only")
    yield
    kernels.reset()


def inputs(m: int, k: int, seed: int = 0) -> torch.Tensor:
    """Random rows with one large column (LLM activations have such outliers)."""
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(seed))
    x[:, 5] *= 40
    return x


def int4_layer(n: int, k: int, gs: int) -> Int4Linear:
    torch.manual_seed(n + k)
    return Int4Linear(torch.nn.Linear(k, n), group_size=gs)


@pytest.mark.usefixtures("native_only")
@pytest.mark.parametrize("m", ROWS)
@pytest.mark.parametrize("n, k, gs", SHAPES)
def test_int4_equals_the_float32_product(n, k, gs, m):
    layer = int4_layer(n, k, gs)
    assert layer.native and not layer.kernel and layer.packed is None
    x = inputs(m, k)
    got, want = layer(x), x @ layer.weight.T + layer.bias
    # int16 inputs: each product term is off by at most |w| * 2**-16 * (its chunk's max |x|)
    chunk_max = x.abs().view(m, k // 32, 32).amax(-1).repeat_interleave(32, 1)
    bound = (chunk_max @ layer.weight.abs().T) * 2.0**-16 + 1e-5 * want.abs() + 1e-5
    assert bool(((got - want).abs() <= bound).all()), ((got - want).abs() / bound).max()
    if m > 16:  # dequantized tiles and a float32 matmul: the float32 product
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)


@pytest.mark.usefixtures("native_only")
@pytest.mark.parametrize("m", ROWS)
@pytest.mark.parametrize("n, k", [(64, 128), (38, 200), (37, 96)])  # 200: a ragged 8-column tail
def test_int8_equals_the_float32_product(n, k, m):
    torch.manual_seed(0)
    layer = Int8Linear(torch.nn.Linear(k, n))
    assert layer.native and not layer.kernel
    x = inputs(m, k)
    torch.testing.assert_close(layer(x), x @ layer.weight.T + layer.bias, atol=1e-4, rtol=1e-5)


@pytest.mark.usefixtures("native_only")
def test_int4_layer_holds_portable_codes_and_row_major_scales():
    layer = int4_layer(64, 256, 64)
    assert {n for n, _ in layer.named_buffers()} == {"qweight", "scales_and_zeros"}
    sz = layer.scales_and_zeros
    assert sz.shape == (4, 64, 2) and sz.transpose(0, 1).is_contiguous()  # one stream per row
    sd = layer.state_dict()
    assert sd["scales_and_zeros"].shape == (4, 64, 2)
    other = int4_layer(64, 256, 32 * 2)
    other.load_state_dict(sd)
    x = inputs(3, 256)
    assert torch.equal(other(x), layer(x))
    assert "lmlab AVX2 kernel" in repr(layer)


@pytest.mark.usefixtures("native_only")
@pytest.mark.parametrize("cls", [Int4Linear, Int8Linear])
def test_decoding_rows_take_lmlab_kernel_and_batches_torch_where_it_is_fast(cls, monkeypatch):
    monkeypatch.delenv(kernels.ENV)
    torch_kernel = "int4_weight_only" if cls is Int4Linear else "int8_weight_only"
    if not (getattr(kernels.available(), torch_kernel) and kernels.torch_batches_fast()):
        pytest.skip("torch's kernels do not run their AVX-512 code here: lmlab's does all rows")
    ours = spy(monkeypatch, "lmlab_native", cls.__name__.lower().replace("linear", "_linear"))
    theirs = spy(monkeypatch, "aten", "_weight_int4pack_mm_for_cpu" if cls is Int4Linear
                 else "_weight_int8pack_mm")  # fmt: skip
    layer = cls(torch.nn.Linear(128, 64))
    assert layer.native and layer.kernel and "up to 4 rows" in repr(layer)
    for m in (1, 4, 5, 16):
        x = inputs(m, 128)
        torch.testing.assert_close(layer(x), x @ layer.weight.T + layer.bias, atol=0.1, rtol=0.02)
    assert (len(ours), len(theirs)) == (2, 2)
    if cls is Int4Linear:  # torch's copy of the scales follows a state dict and dtype moves
        torch.manual_seed(1)
        other = cls(torch.nn.Linear(128, 64))
        layer.load_state_dict(other.state_dict())
        layer.half()
        x = inputs(16, 128)
        assert layer.torch_scales.dtype == torch.bfloat16
        torch.testing.assert_close(layer(x.half()).float(), other(x), atol=0.2, rtol=0.02)


@pytest.mark.usefixtures("native_only")
def test_rows_of_more_groups_than_the_kernel_takes_fall_back():
    wide = Int4Linear(torch.nn.Linear(32 * 1025, 16))  # 1025 groups of 32: one over its limit
    assert not wide.native
    x = inputs(1, 32 * 1025)
    want = x.bfloat16().float() @ wide.weight.T + wide.bias  # the fallback takes bf16 inputs
    torch.testing.assert_close(wide(x), want, atol=1e-3, rtol=1e-4)


@pytest.mark.usefixtures("native_only")
def test_the_ops_compile_and_give_what_eager_does():
    layer = int4_layer(64, 128, 32)
    head = Int8Linear(torch.nn.Linear(64, 96))
    model = torch.nn.Sequential(layer, torch.nn.GELU(), head)
    x = inputs(2, 128)
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.usefixtures("native_only")
def test_greedy_decoding_equals_the_dequantized_float_model():
    """A tiny model, int4 body and int8 head, 48 greedy tokens one row at a time: the same tokens
    as a float32 model holding the dequantized weights."""
    from lmlab.families import preset
    from lmlab.generate.quantize import dequantized, quantize
    from lmlab.model import Transformer

    torch.manual_seed(0)
    model = quantize(Transformer(preset("llama-tiny", d_ff=512)).eval(), kind="int4")
    held = dequantized(model)
    for seed in range(3):
        prompt = torch.randint(0, 512, (1, 5), generator=torch.Generator().manual_seed(seed))
        got = generate(model, prompt, max_new_tokens=48).sequences
        assert got == generate(held, prompt, max_new_tokens=48).sequences


@pytest.mark.usefixtures("native_only")
def test_a_failed_build_says_why_and_torch_kernels_take_over(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", "false")  # a "compiler" that fails without a word
    with pytest.raises(RuntimeError, match=r"building quantized_gemv.cpp failed"):
        native.build(tmp_path / "lmlab_native.so")
    assert not list(tmp_path.iterdir())  # nothing half-written left behind
    monkeypatch.setenv("CXX", "no-such-compiler")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match=r"no C\+\+ compiler found"):
        native.compiler()
    monkeypatch.setenv(kernels.ENV, "-native_gemv")
    assert "forced off by LMLAB_KERNELS=-native_gemv" in kernels.reasons()["native_gemv"]
    layer = int4_layer(64, 128, 32)
    assert not layer.native and layer.kernel == kernels.available().int4_weight_only


def weights(n: int, k: int, seed: int = 0) -> torch.Tensor:
    """Rows of different scales, one constant group (scale clamps at 1e-8), one negative row."""
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed))
    w = w * torch.linspace(0.01, 3, n)[:, None]
    w[0, :32] = 0.25
    w[-1] = -w[-1].abs()
    return w


@pytest.mark.usefixtures("native_only")
@pytest.mark.parametrize("n, k, gs", [*SHAPES, (1536, 576, 32)])
def test_int4_quantize_gives_exactly_what_int4_params_does(n, k, gs):
    from lmlab.quantized import int4_params, pack_nibbles

    w = weights(n, k)
    codes, scale, zero = int4_params(w, gs)
    nibbles, sz = torch.ops.lmlab_native.int4_quantize(w, gs)
    assert torch.equal(nibbles, pack_nibbles(codes))
    assert torch.equal(sz[..., 0], scale) and torch.equal(sz[..., 1], zero)


@pytest.mark.usefixtures("native_only")
@pytest.mark.parametrize("n, k, gs", SHAPES)
def test_int4_dequantize_gives_the_layer_weight(n, k, gs):
    layer = int4_layer(n, k, gs)
    sz = layer.scales_and_zeros.transpose(0, 1).contiguous()
    w = torch.ops.lmlab_native.int4_dequantize(layer.qweight, sz, gs, torch.float32)
    assert torch.equal(w, layer.weight)  # (q - 8) * scale is exact: one rounding, as in torch
    wb = torch.ops.lmlab_native.int4_dequantize(layer.qweight, sz, gs, torch.bfloat16)
    assert torch.equal(wb, layer.weight.bfloat16())  # rounded to nearest even


@pytest.mark.usefixtures("native_only")
def test_long_prompts_take_a_bf16_product_where_bf16_is_native(monkeypatch):
    monkeypatch.delenv(kernels.ENV)
    if not kernels.bf16_gemm_fast():
        pytest.skip("no AVX512-BF16 / AMX here: long prompts take torch's or lmlab's int4 kernel")
    calls = spy(monkeypatch, "lmlab_native", "int4_dequantize")
    layer = int4_layer(64, 128, 32)
    assert layer.bf16_prompts
    for m in (32, 33, 100):
        x = inputs(m, 128)
        want = x.bfloat16().float() @ layer.weight.bfloat16().float().T + layer.bias
        torch.testing.assert_close(layer(x), want, atol=2e-2, rtol=1e-2)
    assert len(calls) == 2  # 33 and 100 rows; 32 rows still take torch's int4 kernel
