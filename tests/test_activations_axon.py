"""The activations Axon has beyond the first ten (celu exp hard_sigmoid hard_silu hard_tanh
linear log_sigmoid log_sumexp mish relu6 selu softsign): Axon's own numbers (the doctests of
lib/axon/activations.ex, and the forward and backward tests of test/axon/activations_test.exs,
which match jax), torch's functions where torch has the op, stability for |x| ~ 100, and the
option and shape rules. Torch/ONNX/JSON/file/empty-batch parity comes from their rows in
op_cases.py.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from graphdsl.backends.torch_backend import ACTIVATIONS as TORCH_ACTIVATIONS

import graphdsl as gd
from graphdsl import GraphDSLError
from graphdsl.ops.nn import ACTIVATIONS as OPTIONS

X7 = [-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0]
X23 = [[-1.0, -2.0, -3.0], [1.0, 2.0, 3.0]]

# Axon's doctests: (activation, input, expected); f32 ones exact to float32, bf16 to 2e-2
DOCTESTS_F32 = [
    ("celu", X7, [-0.9502129554748535, -0.8646647334098816, -0.6321205496788025, 0.0, 1.0, 2.0,
     3.0]),
    ("exp", X7, [0.049787066876888275, 0.1353352814912796, 0.3678794503211975, 1.0,
     2.7182817459106445, 7.389056205749512, 20.08553695678711]),
    ("hard_sigmoid", X7, [0.0, 0.0, 0.0, 0.20000000298023224, 0.4000000059604645,
     0.6000000238418579, 0.800000011920929]),
    ("hard_silu", X7, [-0.0, -0.0, -0.0, 0.0, 0.4000000059604645, 1.2000000476837158,
     2.4000000953674316]),
    ("hard_tanh", X7, [-1.0, -1.0, -1.0, 0.0, 1.0, 1.0, 1.0]),
    ("linear", X7, [-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0]),
    ("log_sumexp", X7, [3.4577627182006836]),
    ("log_sigmoid", X7, [-3.0485873222351074, -2.1269280910491943, -1.3132617473602295,
     -0.6931471824645996, -0.3132616877555847, -0.12692801654338837, -0.04858734831213951]),
    ("mish", X7, [-0.14564745128154755, -0.2525014877319336, -0.30340147018432617, 0.0,
     0.8650984168052673, 1.9439589977264404, 2.98653507232666]),
    ("relu6", X7, [0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0]),
    ("selu", X7, [-1.670568823814392, -1.5201665163040161, -1.1113307476043701, 0.0,
     1.0507010221481323, 2.1014020442962646, 3.1521029472351074]),
    ("softsign", X7, [-0.75, -0.6666666865348816, -0.5, 0.0, 0.5, 0.6666666865348816, 0.75]),
]
DOCTESTS_BF16 = [
    ("celu", X23, [[-0.62890625, -0.86328125, -0.94921875], [1.0, 2.0, 3.0]]),
    ("exp", X23, [[0.3671875, 0.134765625, 0.049560546875], [2.703125, 7.375, 20.0]]),
    ("hard_sigmoid", X23, [[0.0, 0.0, 0.0], [0.3984375, 0.59765625, 0.796875]]),
    ("hard_silu", X23, [[-0.0, -0.0, -0.0], [0.3984375, 1.1953125, 2.390625]]),
    ("hard_tanh", X23, [[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]),
    ("linear", X23, [[-1.0, -2.0, -3.0], [1.0, 2.0, 3.0]]),
    ("log_sumexp", X23, [[-0.59375], [3.390625]]),
    ("log_sigmoid", X23, [[-1.3125, -2.125, -3.046875], [-0.3125, -0.1259765625, -0.04833984375]]),
    ("mish", X23, [[-0.30078125, -0.25, -0.1435546875], [0.86328125, 1.9375, 2.96875]]),
    ("relu6", X23, [[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]]),
    ("selu", X23, [[-1.09375, -1.5, -1.65625], [1.046875, 2.09375, 3.140625]]),
    ("softsign", X23, [[-0.5, -0.6640625, -0.75], [0.5, 0.6640625, 0.75]]),
]
# Axon's forward tests ("matches jax"): (activation, options, input, expected)
JAX = [
    ("celu", {}, [0.534882128238678, 0.6075059175491333, 0.8809065222740173], [0.534882128238678,
     0.6075059175491333, 0.8809065222740173]),
    ("celu", {}, [ [0.5515183806419373, 0.01937619037926197], [0.11977817863225937,
     0.11377150565385818] ], [ [0.5515183806419373, 0.01937619037926197], [0.11977817863225937,
     0.11377150565385818] ]),
    ("celu", {}, [ [[0.5185574293136597, 0.3031159043312073]], [[0.9700577855110168,
     0.12915539741516113]] ], [ [[0.5185574293136597, 0.3031159043312073]], [[0.9700577855110168,
     0.12915539741516113]] ]),
    ("celu", {'alpha': 0.5}, [0.5254644751548767, 0.7386103868484497, 0.7302365303039551],
     [0.5254644751548767, 0.7386103868484497, 0.7302365303039551]),
    ("celu", {'alpha': 0.5}, [ [0.3322221636772156, 0.8841397166252136], [0.8507494926452637,
     0.307709664106369] ], [ [0.3322221636772156, 0.8841397166252136], [0.8507494926452637,
     0.307709664106369] ]),
    ("celu", {'alpha': 0.5}, [ [[0.8232214450836182, 0.9869292378425598]], [[0.6635103821754456,
     0.9175488948822021]] ], [ [[0.8232214450836182, 0.9869292378425598]], [[0.6635103821754456,
     0.9175488948822021]] ]),
    ("exp", {}, [0.4639144837856293, 0.3422740399837494, 0.6417020559310913], [1.5902869701385498,
     1.4081461429595947, 1.8997116088867188]),
    ("exp", {}, [ [0.7983033061027527, 0.3828118145465851], [0.5582484006881714,
     0.0010385476052761078] ], [ [2.2217681407928467, 1.4664020538330078], [1.7476086616516113,
     1.0010390281677246] ]),
    ("exp", {}, [ [[0.1891545206308365, 0.23333953320980072]], [[0.3159049153327942,
     0.26520010828971863]] ], [ [[1.2082276344299316, 1.262810230255127]], [[1.37149977684021,
     1.3036918640136719]] ]),
    ("hard_tanh", {}, [0.31174659729003906, 0.6287908554077148, 0.8463948369026184],
     [0.31174659729003906, 0.6287908554077148, 0.8463948369026184]),
    ("hard_tanh", {}, [ [0.8712798953056335, 0.26574787497520447], [0.5519879460334778,
     0.24893896281719208] ], [ [0.8712798953056335, 0.26574787497520447], [0.5519879460334778,
     0.24893896281719208] ]),
    ("hard_tanh", {}, [ [[0.20783449709415436, 0.046247102320194244]], [[0.12332560122013092,
     0.7893155217170715]] ], [ [[0.20783449709415436, 0.046247102320194244]],
     [[0.12332560122013092, 0.7893155217170715]] ]),
    ("log_sigmoid", {}, [0.1184869334101677, 0.8524676561355591, 0.8292036652565002],
     [-0.6356576085090637, -0.35512682795524597, -0.3621376156806946]),
    ("log_sigmoid", {}, [ [0.9977004528045654, 0.6799364686012268], [0.5323657989501953,
     0.5890879034996033] ], [ [-0.31388065218925476, -0.4098881483078003], [-0.46198034286499023,
     -0.4413682520389557] ]),
    ("log_sigmoid", {}, [ [[0.587926983833313, 0.8881919384002686]], [[0.6705363392829895,
     0.6351630091667175]] ], [ [[-0.4417826533317566, -0.34458136558532715]],
     [[-0.4130589962005615, -0.42516908049583435]] ]),
    ("relu6", {}, [0.842319667339325, 0.021900499239563942, 0.19451844692230225],
     [0.842319667339325, 0.021900499239563942, 0.19451844692230225]),
    ("relu6", {}, [ [0.01567154936492443, 0.26180967688560486], [0.6615678071975708,
     0.409149169921875] ], [ [0.01567154936492443, 0.26180967688560486], [0.6615678071975708,
     0.409149169921875] ]),
    ("relu6", {}, [ [[0.04743034392595291, 0.7952200770378113]], [[0.09659137576818466,
     0.210462749004364]] ], [ [[0.04743034392595291, 0.7952200770378113]], [[0.09659137576818466,
     0.210462749004364]] ]),
    ("selu", {}, [0.5557087063789368, 0.09193431586027145, 0.9969830513000488],
     [0.5838837027549744, 0.09659548103809357, 1.0475311279296875]),
    ("selu", {}, [ [0.6687846183776855, 0.36514317989349365], [0.763460636138916,
     0.8376092314720154] ], [ [0.7026926875114441, 0.3836563229560852], [0.8021688461303711,
     0.8800768852233887] ]),
    ("selu", {}, [ [[0.9511207938194275, 0.9309434294700623]], [[0.02450866810977459,
     0.42269641160964966]] ], [ [[0.9993435740470886, 0.9781432151794434]], [[0.025751283392310143,
     0.44412755966186523]] ]),
    ("softsign", {}, [0.6500415802001953, 0.7388723492622375, 0.5124310851097107],
     [0.39395466446876526, 0.4249146580696106, 0.33881282806396484]),
    ("softsign", {}, [ [0.584363579750061, 0.21967218816280365], [0.41985762119293213,
     0.10589564591646194] ], [ [0.3688317537307739, 0.18010756373405457], [0.29570403695106506,
     0.09575554728507996] ]),
    ("softsign", {}, [ [[0.9445214867591858, 0.16833151876926422]], [[0.753282368183136,
     0.48777902126312256]] ], [ [[0.4857346713542938, 0.1440785527229309]], [[0.4296412169933319,
     0.3278571665287018]] ]),
]
# Axon's backward tests: the gradient of sum(activation(x)), (activation, options, x, grad)
JAX_GRAD = [
    ("celu", {}, [0.0006543696508742869, 0.9109137058258057, 0.5773505568504333], [1.0, 1.0, 1.0]),
    ("celu", {}, [ [0.8410307765007019, 0.7737964987754822], [0.3063606917858124,
     0.47949355840682983] ], [[1.0, 1.0], [1.0, 1.0]]),
    ("celu", {}, [ [[0.7361555695533752, 0.07279454171657562]], [[0.12938232719898224,
     0.19182132184505463]] ], [[[1.0, 1.0]], [[1.0, 1.0]]]),
    ("exp", {}, [0.7080050706863403, 0.5748331546783447, 0.8570890426635742], [2.029937744140625,
     1.7768340110778809, 2.3562915325164795]),
    ("exp", {}, [ [0.690890371799469, 0.4090757966041565], [0.9405754804611206, 0.5836707949638367]
     ], [ [1.9954915046691895, 1.5054258108139038], [2.561455011367798, 1.7926065921783447] ]),
    ("exp", {}, [ [[0.8088638186454773, 0.4728061258792877]], [[0.12738095223903656,
     0.43700599670410156]] ], [ [[2.2453553676605225, 1.6044902801513672]], [[1.1358495950698853,
     1.548065423965454]] ]),
    ("hard_tanh", {}, [0.9485284090042114, 0.435951828956604, 0.5815699696540833], [1.0, 1.0,
     1.0]),
    ("hard_tanh", {}, [ [0.4597303569316864, 0.8040322661399841], [0.7624267935752869,
     0.262974351644516] ], [[1.0, 1.0], [1.0, 1.0]]),
    ("hard_tanh", {}, [ [[0.22331906855106354, 0.967119038105011]], [[0.5433276295661926,
     0.06428512930870056]] ], [[[1.0, 1.0]], [[1.0, 1.0]]]),
    ("log_sigmoid", {}, [0.007618676871061325, 0.2710806727409363, 0.7870540022850037],
     [0.4980953633785248, 0.43264180421829224, 0.3128015995025635]),
    ("log_sigmoid", {}, [ [0.5251182317733765, 0.6292591691017151], [0.20837312936782837,
     0.3905956745147705] ], [ [0.3716561794281006, 0.347678542137146], [0.4480943977832794,
     0.4035739302635193] ]),
    ("log_sigmoid", {}, [ [[0.7089985609054565, 0.9742392301559448]], [[0.8972120881080627,
     0.5678815841674805]] ], [ [[0.3298201560974121, 0.27403631806373596]], [[0.28962376713752747,
     0.3617258071899414]] ]),
    ("relu6", {}, [0.3808571994304657, 0.5188078880310059, 0.9164689183235168], [1.0, 1.0, 1.0]),
    ("relu6", {}, [ [0.5499739646911621, 0.34733402729034424], [0.6983950734138489,
     0.24491633474826813] ], [[1.0, 1.0], [1.0, 1.0]]),
    ("relu6", {}, [ [[0.16589230298995972, 0.9246458411216736]], [[0.23529919981956482,
     0.2500540614128113]] ], [[[1.0, 1.0]], [[1.0, 1.0]]]),
    ("selu", {}, [0.6316671967506409, 0.8289909958839417, 0.18112128973007202],
     [1.0507010221481323, 1.0507010221481323, 1.0507010221481323]),
    ("selu", {}, [ [0.4947720468044281, 0.15160438418388367], [0.44867998361587524,
     0.808595597743988] ], [ [1.0507010221481323, 1.0507010221481323], [1.0507010221481323,
     1.0507010221481323] ]),
    ("selu", {}, [ [[0.8145947456359863, 0.44749367237091064]], [[0.8953422904014587,
     0.20643578469753265]] ], [ [[1.0507010221481323, 1.0507010221481323]], [[1.0507010221481323,
     1.0507010221481323]] ]),
    ("softsign", {}, [0.8105446696281433, 0.7689074873924255, 0.37004250288009644],
     [0.3050573468208313, 0.31958746910095215, 0.5327603816986084]),
    ("softsign", {}, [ [0.97364342212677, 0.5319579839706421], [0.10144895315170288,
     0.6431559920310974] ], [ [0.25672173500061035, 0.4260948896408081], [0.8242732882499695,
     0.3703756332397461] ]),
    ("softsign", {}, [ [[0.512872040271759, 0.010262660682201385]], [[0.0559421144425869,
     0.8854929804801941]] ], [ [[0.4369136691093445, 0.9797863960266113]], [[0.8968499898910522,
     0.281287282705307]] ]),
]

NEW = ("celu", "exp", "hard_sigmoid", "hard_silu", "hard_tanh", "linear", "log_sigmoid",
       "log_sumexp", "mish", "relu6", "selu", "softsign")


def _run(act: str, x: np.ndarray, backend: str = "numpy", **opts) -> np.ndarray:
    """``act`` with ``opts`` on ``x`` (its first axis the batch), through ``backend``."""
    model = gd.activation(gd.input("x", (None, *x.shape[1:])), act, **opts)
    out = gd.predict(model, gd.build(model)[0](), x, backend=backend)
    return np.asarray(out)


def _f32(v) -> np.ndarray:
    return np.asarray(v, np.float32)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("act,x,want", DOCTESTS_F32, ids=[d[0] for d in DOCTESTS_F32])
def test_axon_doctests_f32(act, x, want, backend):
    np.testing.assert_allclose(_run(act, _f32(x), backend), _f32(want), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("act,x,want", DOCTESTS_BF16, ids=[d[0] for d in DOCTESTS_BF16])
def test_axon_doctests_bf16_within_bf16_rounding(act, x, want):
    np.testing.assert_allclose(_run(act, _f32(x)), _f32(want), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("act,opts,x,want", JAX, ids=[f"{j[0]}-{i}" for i, j in enumerate(JAX)])
def test_axon_forward_tests(act, opts, x, want, backend):
    np.testing.assert_allclose(_run(act, _f32(x), backend, **opts), _f32(want),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("act,opts,x,want", JAX_GRAD,
                         ids=[f"{j[0]}-{i}" for i, j in enumerate(JAX_GRAD)])
def test_axon_backward_tests_through_the_torch_kernels(act, opts, x, want):
    t = torch.tensor(x, requires_grad=True)
    TORCH_ACTIVATIONS[act](t, {**OPTIONS[act], **opts}).sum().backward()
    np.testing.assert_allclose(t.grad.numpy(), _f32(want), rtol=1e-5, atol=1e-6)


def _hard_sigmoid_torch(x: torch.Tensor) -> torch.Tensor:  # Axon's alpha 0.2, beta 0.2
    return torch.clamp(0.2 * x + 0.2, 0, 1)


TORCH = {
    "celu": (lambda x: F.celu(x), {}), "celu_alpha": (lambda x: F.celu(x, 0.5), {"alpha": 0.5}),
    "exp": (torch.exp, {}), "hard_tanh": (F.hardtanh, {}), "linear": (lambda x: x, {}),
    "log_sigmoid": (F.logsigmoid, {}), "mish": (F.mish, {}), "relu6": (F.relu6, {}),
    "selu": (F.selu, {}), "softsign": (F.softsign, {}),
    "log_sumexp": (lambda x: torch.logsumexp(x, dim=-1, keepdim=True), {}),
    "log_sumexp_axis1": (lambda x: torch.logsumexp(x, dim=1, keepdim=True), {"axis": 1}),
    # torch's hard sigmoid / hard swish are Axon's with alpha 1/6, beta 1/2 (not the default)
    "hard_sigmoid": (F.hardsigmoid, {"alpha": 1 / 6, "beta": 0.5}),
    "hard_silu": (F.hardswish, {"alpha": 1 / 6, "beta": 0.5}),
    "hard_sigmoid_default": (_hard_sigmoid_torch, {}),
    "hard_silu_default": (lambda x: x * _hard_sigmoid_torch(x), {}),
}


@pytest.mark.parametrize("key", TORCH)
def test_numpy_matches_torch_functions(key):
    fn, opts = TORCH[key]
    x = np.random.default_rng(3).normal(0, 4, (3, 4, 5)).astype(np.float32)
    want = fn(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_run(key.split("_default")[0].replace("_alpha", "")
                                    .replace("_axis1", ""), x, **opts), want,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("act", [a for a in NEW if a != "exp"])  # exp(100) is inf in float32
def test_numpy_stable_for_large_inputs(act):
    x = _f32([[-100.0, -30.0, 0.0, 30.0, 100.0]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow is fine
        y = _run(act, x)
    assert np.isfinite(y).all(), (act, y)
    np.testing.assert_allclose(y, _run(act, x, "torch"), rtol=1e-5, atol=1e-5)


def test_log_sigmoid_and_log_sumexp_keep_precision_far_out():
    x = _f32([[-100.0, 50.0]])  # log sigmoid(50) = -exp(-50), still a normal float32
    np.testing.assert_allclose(_run("log_sigmoid", x), [[-100.0, -np.exp(-50.0)]], rtol=1e-6)
    np.testing.assert_allclose(_run("log_sumexp", _f32([[1000.0, 1000.0]])),
                               [[1000.0 + np.log(2.0)]], rtol=1e-6)
    np.testing.assert_allclose(_run("log_sumexp", _f32([[-np.inf, -np.inf]])), [[-np.inf]])


def test_log_sumexp_keeps_the_axis_with_size_one():
    x = gd.input("x", (None, 4, 6))
    assert gd.get_output_shape(gd.log_sumexp(x)) == (None, 4, 1)
    assert gd.get_output_shape(gd.log_sumexp(x, axis=1)) == (None, 1, 6)
    assert gd.get_output_shape(gd.celu(x)) == (None, 4, 6)
    with pytest.raises(GraphDSLError, match="out of range"):
        gd.log_sumexp(x, axis=3)


def test_options_are_checked_at_construction():
    x = gd.input("x", (None, 4))
    with pytest.raises(GraphDSLError, match="alpha must be non-zero in CELU activation"):
        gd.celu(x, alpha=0.0)
    with pytest.raises(GraphDSLError, match="beta must be a number"):
        gd.hard_sigmoid(x, beta="half")
    with pytest.raises(GraphDSLError, match="gamma must be a number"):
        gd.selu(x, gamma=None)
    with pytest.raises(GraphDSLError, match="axis must be an integer"):
        gd.activation(x, "log_sumexp", axis=0.5)
    with pytest.raises(GraphDSLError, match="mish"):  # mish has no options
        gd.activation(x, "mish", alpha=1.0)
    assert gd.celu(x, alpha=-0.5) is not None  # Axon refuses only zero


def test_axon_defaults_are_the_defaults():
    x = gd.input("x", (None, 4))
    assert gd.hard_sigmoid(x).attrs == {"alpha": 0.2, "beta": 0.2}
    assert gd.hard_silu(x).attrs == {"alpha": 0.2, "beta": 0.2}
    assert gd.log_sumexp(x).attrs == {"axis": -1}
    assert gd.selu(x).attrs == {"alpha": 1.6732632423543772, "gamma": 1.0507009873554805}


@pytest.mark.parametrize("act", [a for a in NEW if a != "log_sumexp"])
def test_fused_with_default_options(act):
    x = gd.input("x", (None, 3))
    model = gd.dense(x, 4, activation=act, bias_initializer="ones", name="d")
    st = gd.build(model)[0]()
    xs = np.random.default_rng(1).normal(size=(2, 3)).astype(np.float32)
    pre = xs @ st.data["d"]["kernel"] + st.data["d"]["bias"]
    np.testing.assert_allclose(gd.predict(model, st, xs), _run(act, pre), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(gd.predict(model, st, xs, backend="torch"), _run(act, pre),
                               rtol=1e-5, atol=1e-5)


def test_log_sumexp_as_a_layers_activation_is_its_own_node():
    y = gd.dense(gd.input("x", (None, 3)), 4, activation="log_sumexp")
    assert y.op == "log_sumexp" and y.inputs[0].op == "dense" and y.shape == (None, 1)


@pytest.mark.parametrize("make", [lambda x: gd.celu(x, alpha=float("inf")),
                                  lambda x: gd.selu(x, gamma=float("-inf")),
                                  lambda x: gd.hard_sigmoid(x, beta=float("inf")),
                                  lambda x: gd.elu(x, alpha=float("inf"))])
def test_an_infinite_activation_option_is_refused_not_nan(make):
    """An infinite alpha/beta/gamma would turn outputs into NaN (inf * 0): refused when
    the layer is built."""
    with pytest.raises(gd.GraphDSLError, match=r"must be a number in \[.*\] and finite, "
                                               r"got -?inf"):
        make(gd.input("x", (None, 3)))
