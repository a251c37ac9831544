"""The torch engine's data: the pydoc text (character level) and MNIST-1D generated locally."""

import random
import sys

import numpy as np
import pytest

from fpsim.sim.data import TextDataset, load_data, pydoc_text

PYDOC_SIZES = {(3, 11, 7): (464_970, 103)}
"""Characters and distinct characters of the pydoc text, as documented in ``pydoc_text``, per CPython version."""


def test_pydoc_text_is_the_topics_in_sorted_key_order():
    from pydoc_data.topics import topics

    text = pydoc_text()
    assert text.startswith(topics[min(topics)]) and text.endswith(topics[max(topics)])
    assert len(text) == sum(len(value) for value in topics.values())
    if sys.version_info[:3] in PYDOC_SIZES:
        assert (len(text), len(set(text))) == PYDOC_SIZES[sys.version_info[:3]]


def test_pydoc_split_is_fixed_and_covers_the_text():
    data, again = load_data("pydoc"), load_data({"name": "pydoc"})
    text = pydoc_text()
    assert isinstance(data, TextDataset) and data.task == "language-model"
    assert data.vocabulary == "".join(sorted(set(text))) and data.vocab_size == len(set(text))
    assert len(data.validation) == round(0.1 * len(text)) and len(data.train) + len(data.validation) == len(text)
    assert data.decode(data.train) + data.decode(data.validation) == text
    assert np.array_equal(data.train, again.train) and np.array_equal(data.validation, again.validation)
    assert len(load_data({"name": "pydoc", "validation": 0.25}).validation) == round(0.25 * len(text))


def test_pydoc_batches_are_seeded_windows_with_next_character_targets():
    data = load_data("pydoc")
    x, y = data.batch(np.random.default_rng(7), 5, 16)
    x2, y2 = data.batch(np.random.default_rng(7), 5, 16)
    assert x.shape == y.shape == (5, 16) and np.array_equal(x, x2) and np.array_equal(y, y2)
    assert np.array_equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one
    text = data.decode(data.train)
    for row, target in zip(x, y):
        window = data.decode(row) + data.decode(target[-1:])
        assert window in text
    assert not np.array_equal(x, data.batch(np.random.default_rng(8), 5, 16)[0])


def test_pydoc_validation_windows_tile_the_validation_text():
    data = load_data("pydoc")
    x, y = data.validation_windows(64)
    assert x.shape == ((len(data.validation) - 1) // 64, 64)
    assert np.array_equal(x.ravel(), data.validation[:x.size])
    assert np.array_equal(y.ravel(), data.validation[1:x.size + 1])


@pytest.mark.parametrize("spec, message", [
    ({"name": "pydoc", "validation": 1.5}, "validation share"),
    ({"name": "pydoc", "blocks": 3}, "unknown option"),
    ("pydoc:somewhere", "takes no path"),
])
def test_pydoc_bad_options_say_what_to_change(spec, message):
    with pytest.raises(ValueError, match=message):
        load_data(spec)


def test_mnist1d_is_generated_locally_without_touching_global_random_state():
    pytest.importorskip("mnist1d")
    numpy_before, python_before = np.random.get_state()[1].copy(), random.getstate()
    data = load_data("mnist1d")
    assert np.array_equal(np.random.get_state()[1], numpy_before) and random.getstate() == python_before
    assert data.x_train.shape == (4000, 40) and data.x_test.shape == (1000, 40) and data.outputs == 10
    assert data.task == "classification" and set(np.unique(data.y_train)) == set(range(10))
    everything = np.concatenate([data.x_train, data.x_test])
    np.testing.assert_allclose([everything.mean(), everything.std()], [0, 1], atol=1e-9)
    from mnist1d.data import get_dataset_args, make_dataset

    made = make_dataset(get_dataset_args())  # the package's own generation, same default seed
    assert np.array_equal(made["x"], data.x_train) and np.array_equal(made["y_test"], data.y_test)


def test_dataset_batches_are_epoch_permutations():
    data = load_data("digits")
    batches = data.batches(np.random.default_rng(0), 100)
    first_epoch = np.concatenate([next(batches) for _ in range(len(data.y_train) // 100)])
    assert len(set(first_epoch.tolist())) == len(first_epoch) == 1400  # no repeats within an epoch
