"""The convolutional encoder and decoder: shapes for several image shapes and heads, the
decoder's pixel order, gradients, initialisation, refused arguments, and a short SVI run."""

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_vae.conv import ConvDecoder, ConvEncoder, conv_sizes
from pyro_vae.errors import ArgumentError
from pyro_vae.networks import Head, init_parameters

IMAGE_SHAPES = [(1, 28, 28), (3, 32, 32), (28, 20)]
HEADS = {
    "logits": (Head("logits"),),
    "gaussian_shared": (Head("loc"), Head("log_var", shared=True)),
    "categorical": (Head("logits", per_dim=256),),
}
SMALL = {"channels": (4, 6), "hidden_dims": (8,)}  # keeps the tests fast


@pytest.fixture(autouse=True)
def one_thread():
    """These networks are tiny: one thread is faster, and on a busy machine several threads
    spin-wait for each other (20x slower here when other processes share the two cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def chw(image_shape):
    return (1, *image_shape) if len(image_shape) == 2 else tuple(image_shape)


def x_dim(image_shape):
    c, h, w = chw(image_shape)
    return c * h * w


@pytest.mark.parametrize("image_shape", IMAGE_SHAPES)
def test_encoder_shapes_with_leading_dims(image_shape):
    enc = ConvEncoder(image_shape, latent_dim=5, **SMALL)
    x = torch.rand(3, 2, x_dim(image_shape))  # [K, M, D]
    loc, scale = enc(x)
    assert loc.shape == scale.shape == (3, 2, 5)
    assert (scale > 0).all()
    # The leading dims are flattened and restored: the same as one image at a time.
    loc_one, scale_one = enc(x[1, 0])
    assert loc_one.shape == (5,)
    torch.testing.assert_close(loc_one, loc[1, 0])
    torch.testing.assert_close(scale_one, scale[1, 0])


def test_encoder_scale_is_exp_half_log_var():
    enc = ConvEncoder((1, 12, 12), 3, **SMALL)
    x = torch.rand(4, 144)
    h = enc.trunk(enc.convs(x.reshape(4, 1, 12, 12)).flatten(1))
    loc, scale = enc(x)
    torch.testing.assert_close(loc, enc.loc(h))
    torch.testing.assert_close(scale, torch.exp(0.5 * enc.log_var(h)))


@pytest.mark.parametrize("image_shape", IMAGE_SHAPES)
@pytest.mark.parametrize("heads", list(HEADS))
def test_decoder_shapes(image_shape, heads):
    dec = ConvDecoder(5, image_shape, heads=HEADS[heads], **SMALL)
    z = torch.randn(3, 2, 5)
    out = dec(z)
    outs = out if isinstance(out, tuple) else (out,)
    assert len(outs) == len(HEADS[heads])
    d = x_dim(image_shape)
    for head, o in zip(HEADS[heads], outs, strict=True):
        assert o.shape == ((3, 2, d) if head.per_dim == 1 else (3, 2, d, head.per_dim))
    assert isinstance(out, torch.Tensor) == (len(HEADS[heads]) == 1)


@pytest.mark.parametrize("image_shape", [(1, 28, 28), (3, 32, 32), (28, 20), (1, 12, 12)])
@pytest.mark.parametrize("kernel_size", [3, 4, 5])
def test_sizes_invert_exactly(image_shape, kernel_size):
    """Odd sizes too: the decoder's output_padding lands on the encoder's sizes."""
    for shape in (image_shape, (2, 15, 13)):
        enc = ConvEncoder(shape, 2, kernel_size=kernel_size, **SMALL)
        dec = ConvDecoder(2, shape, kernel_size=kernel_size, **SMALL)
        assert dec(enc(torch.rand(2, x_dim(shape)))[0]).shape == (2, x_dim(shape))


def test_conv_sizes():
    assert conv_sizes((1, 28, 28), 2) == [(28, 28), (14, 14), (7, 7)]
    assert conv_sizes((3, 32, 32), 2) == [(32, 32), (16, 16), (8, 8)]
    assert conv_sizes((28, 20), 2) == [(28, 20), (14, 10), (7, 5)]
    assert conv_sizes((1, 15, 13), 2) == [(15, 13), (7, 6), (3, 3)]
    enc = ConvEncoder((28, 20), 2, **SMALL)
    assert enc.trunk[0].in_features == 6 * 7 * 5


@pytest.mark.parametrize("image_shape", [(3, 6, 5), (2, 7, 4)])
def test_decoder_pixel_order(image_shape):
    """Index d of the output is pixel (c, h, w) with d = c*H*W + h*W + w, and the last axis
    is the head's per-pixel value p, taken from the layer's channel c * per_dim + p."""
    c_, h_, w_ = image_shape
    per_dim = 3
    dec = ConvDecoder(2, image_shape, heads=(Head("logits", per_dim=per_dim),), **SMALL)
    assert dec.logits.out_channels == c_ * per_dim
    raw = []
    hook = dec.logits.register_forward_hook(lambda mod, inp, out: raw.append(out))
    z = torch.randn(2, 2)
    out = dec(z)
    hook.remove()
    (layer_out,) = raw
    assert layer_out.shape == (2, c_ * per_dim, h_, w_)
    assert out.shape == (2, c_ * h_ * w_, per_dim)
    for b in range(2):
        for c in range(c_):
            for h in range(h_):
                for w in range(w_):
                    for p in range(per_dim):
                        d = c * h_ * w_ + h * w_ + w
                        assert out[b, d, p] == layer_out[b, c * per_dim + p, h, w]

    # With a zero weight the output is the bias: channel c, value p lands at [c*H*W + ., p].
    with torch.no_grad():
        dec.logits.weight.zero_()
        dec.logits.bias.copy_(torch.arange(c_ * per_dim, dtype=torch.float))
    out = dec(z)
    expected = torch.arange(c_ * per_dim, dtype=torch.float).reshape(c_, 1, per_dim)
    expected = expected.expand(c_, h_ * w_, per_dim).reshape(-1, per_dim)
    torch.testing.assert_close(out[0], expected)


def test_decoder_pixel_order_one_value_per_pixel():
    dec = ConvDecoder(2, (2, 6, 4), heads=(Head("loc"), Head("scale")), **SMALL)
    with torch.no_grad():
        dec.loc.weight.zero_()
        dec.loc.bias.copy_(torch.tensor([1.0, 2.0]))
    loc, scale = dec(torch.randn(3, 2))
    assert loc.shape == scale.shape == (3, 48)
    torch.testing.assert_close(loc[:, :24], torch.ones(3, 24))
    torch.testing.assert_close(loc[:, 24:], torch.full((3, 24), 2.0))


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    shape = (2, 12, 10)
    enc = ConvEncoder(shape, 3, **SMALL)
    dec = ConvDecoder(3, shape, heads=HEADS["gaussian_shared"], **SMALL)
    loc, scale = enc(torch.rand(4, x_dim(shape)))
    mean, log_var = dec(loc + scale * torch.randn_like(scale))
    (mean.sum() + log_var.sum()).backward()
    for net in (enc, dec):
        for name, p in net.named_parameters():
            assert p.grad is not None and (p.grad != 0).any(), name


def test_default_sizes_and_paper_init():
    enc, dec = ConvEncoder((1, 28, 28), 20), ConvDecoder(20, (1, 28, 28))
    assert [m.out_channels for m in enc.convs if hasattr(m, "out_channels")] == [32, 64]
    assert dec.feature_shape == (64, 7, 7)
    for net in (enc, dec):
        init_parameters(net, "paper", 0.01)
        params = torch.cat([p.detach().flatten() for p in net.parameters()])
        assert 0.005 < params.std() < 0.015 and params.abs().max() < 0.1
    loc, scale = enc(torch.rand(2, 784))
    logits = dec(loc)
    assert torch.isfinite(logits).all() and torch.isfinite(scale).all()


@pytest.mark.parametrize(
    ("kwargs", "key", "shown"),
    [
        ({"image_shape": (1, 2, 28, 28)}, "image_shape", "(1, 2, 28, 28)"),
        ({"image_shape": (28,)}, "image_shape", "(28,)"),
        ({"image_shape": (1, 0, 28)}, "image_shape", "(1, 0, 28)"),
        ({"image_shape": (28.0, 28)}, "image_shape", "(28.0, 28)"),
        ({"image_shape": (1, 2, 28)}, "image_shape", "at least 4"),
        ({"image_shape": (3, 3), "channels": (4, 4, 4)}, "image_shape", "(3, 3)"),
        ({"channels": ()}, "channels", "()"),
        ({"channels": (32, 0)}, "channels", "(32, 0)"),
        ({"channels": (32, -4)}, "channels", "-4"),
        ({"kernel_size": 1}, "kernel_size", "=1"),
        ({"hidden_dims": (0,)}, "hidden_dims", "(0,)"),
        ({"activation": "gelu"}, "activation", "'gelu'"),
        ({"latent_dim": 0}, "latent_dim", "=0"),
    ],
)
@pytest.mark.parametrize("net", ["encoder", "decoder"])
def test_bad_arguments_are_refused(kwargs, key, shown, net):
    args = {"image_shape": (1, 28, 28), "latent_dim": 2, **kwargs}
    cls = ConvEncoder if net == "encoder" else ConvDecoder
    with pytest.raises(ArgumentError) as info:
        cls(**args)
    assert info.value.key == key
    assert str(info.value).startswith(key + "=") and shown in str(info.value)


def test_wrong_input_size_is_refused():
    enc, dec = ConvEncoder((1, 12, 12), 2, **SMALL), ConvDecoder(2, (1, 12, 12), **SMALL)
    with pytest.raises(ArgumentError, match=r"\[\.\.\., 144\], got \(3, 100\)"):
        enc(torch.rand(3, 100))
    with pytest.raises(ArgumentError, match=r"\[\.\.\., 2\], got \(3, 5\)"):
        dec(torch.rand(3, 5))


def test_vae_trains_a_few_svi_steps():
    from pyro_vae.model import VAE

    pyro.clear_param_store()
    torch.manual_seed(0)
    shape = (1, 12, 12)
    vae = VAE(
        ConvEncoder(shape, 2, channels=(4, 8), hidden_dims=(16,)),
        ConvDecoder(2, shape, channels=(8, 4), hidden_dims=(16,)),
        latent_dim=2,
        likelihood="bernoulli",
    )
    x = torch.rand(16, 144).bernoulli()
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), loss=Trace_ELBO())
    losses = [svi.step(x) for _ in range(5)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert vae.log_weights(x, num_samples=3).shape == (3, 16)
