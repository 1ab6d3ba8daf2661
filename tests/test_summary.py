"""summary(): the Keras-like table and its totals for the CLI's presets."""
import re

import retroprop as rp
from retroprop import cli


def rows(text):
    """(layer, output shape, params) parsed back from the table body."""
    found = []
    for line in text.splitlines():
        m = re.match(r"^(\S+) \((\w+)\)\s+(\(None(?:, \d+)+\))\s+([\d,]+)$", line)
        if m:
            found.append((m.group(2), m.group(3), int(m.group(4).replace(",", ""))))
    return found


def test_logreg_preset_summary_shows_7850():
    text = cli.build_model("logreg", (28, 28, 1), 10, 0).summary(print_fn=None)
    assert rows(text) == [("Flatten", "(None, 784)", 0), ("Dense", "(None, 10)", 7850)]
    assert "Total params: 7,850" in text and "Trainable params: 7,850" in text
    assert "Non-trainable params: 0" in text


def test_lenet_preset_summary_shows_61706():
    text = cli.build_model("lenet", (28, 28, 1), 10, 0).summary(print_fn=None)
    table = rows(text)
    assert [r[0] for r in table] == ["Conv2D", "MaxPool2D", "Conv2D", "MaxPool2D", "Flatten",
                                    "Dense", "Dense", "Dense"]
    assert [r[1] for r in table][:5] == ["(None, 28, 28, 6)", "(None, 14, 14, 6)",
                                         "(None, 10, 10, 16)", "(None, 5, 5, 16)", "(None, 400)"]
    assert [r[2] for r in table] == [156, 0, 2416, 0, 0, 48120, 10164, 850]
    assert sum(r[2] for r in table) == 61706
    assert "Total params: 61,706" in text


def test_frozen_layers_count_as_non_trainable():
    model = cli.build_model("lenet", (28, 28, 1), 10, 0)
    model.layers[0].trainable = False      # the first convolution: 6 * 5 * 5 + 6
    text = model.summary(print_fn=None)
    assert "Total params: 61,706" in text
    assert "Trainable params: 61,550" in text
    assert "Non-trainable params: 156" in text


def test_summary_printed_by_default(capsys):
    rp.Sequential([rp.layers.Dense(3)], input_shape=(4,)).summary()
    assert "Total params: 15" in capsys.readouterr().out
