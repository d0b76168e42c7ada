"""The models scripts/models/make_models.py makes for the tests and benchmarks: the signatures every test relies on,
what each model computes (run by onnxruntime's Python API, as a reference for the kernel's answers), and that a
second build gives the same bytes."""
import importlib.util
import os

import numpy as np
import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MAKE_MODELS = os.path.join(ROOT, "scripts", "models", "make_models.py")


@pytest.fixture(scope="module")
def make_models():
    spec = importlib.util.spec_from_file_location("make_models", MAKE_MODELS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def session(data):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def signature(model):
    return ([(i.name, i.type, i.shape) for i in model.get_inputs()],
            [(o.name, o.type, o.shape) for o in model.get_outputs()])


@pytest.mark.parametrize("build", ["strings_model_bytes", "slow_model_bytes", "text_model_bytes", "demo_model_bytes"])
def test_a_second_build_writes_the_same_bytes(make_models, build):
    assert getattr(make_models, build)() == getattr(make_models, build)()


def test_the_strings_model_returns_its_strings(make_models):
    model = session(make_models.strings_model_bytes())
    assert signature(model) == ([("INPUT0", "tensor(string)", ["batch", "width"])],
                                [("OUTPUT0", "tensor(string)", ["batch", "width"])])
    strings = np.array([["", "naïve ✓", "a\0b"], ["x", "y", "z"]], dtype=object)
    (answer,) = model.run(None, {"INPUT0": strings})
    assert answer.tolist() == strings.tolist()


def test_the_text_model_lower_cases_and_labels(make_models):
    model = session(make_models.text_model_bytes())
    assert signature(model) == ([("text", "tensor(string)", ["batch", 1])],
                                [("label", "tensor(int64)", ["batch", 1]),
                                 ("normalized", "tensor(string)", ["batch", 1])])
    text = np.array([["Kernel"], ["HELLO"], ["Straße ÉTÉ"], [""]], dtype=object)
    label, normalized = model.run(None, {"text": text})
    vocabulary = make_models.TEXT_VOCABULARY
    assert normalized.tolist() == [["kernel"], ["hello"], ["straße été"], [""]]
    assert label.tolist() == [[vocabulary.index("kernel")], [vocabulary.index("hello")], [-1], [-1]]


def test_the_slow_model_answers_its_input_at_any_batch(make_models):
    model = session(make_models.slow_model_bytes())
    assert signature(model) == ([("x", "tensor(float)", ["batch", 1])], [("y", "tensor(float)", ["batch", 1])])
    for rows in (1, 5):
        x = np.linspace(-3, 3, rows, dtype=np.float32).reshape(rows, 1)
        (y,) = model.run(None, {"x": x})
        assert np.array_equal(x, y)
