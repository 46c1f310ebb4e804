"""Data sets no config or test of dlforge was tuned on, made here or shipped with a package (no download).

Each maker writes its files under ``folder`` and returns the ``data.source`` to train on. ``n`` scales the size
(``quick`` runs pass a small one); the same ``seed`` makes the same files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from sklearn import datasets

GRAY_SIZE = 20  # native side of the grayscale images: not the 32 an image folder used to be resized to
RGB_SIZE = 24
SIGNAL_STEPS = 96
SHAPES = ("circle", "square", "triangle", "cross")


def gray_digits(folder: Path, n: int = 1797, seed: int = 0) -> str:
    """scikit-learn's 8×8 digits, upscaled to 14×14 and placed at a random offset in a 20×20 PNG (mode L)."""
    rng = np.random.default_rng(seed)
    digits = datasets.load_digits()
    root = folder / "gray_digits"
    for i in range(min(n, len(digits.target))):
        small = Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).resize((14, 14), Image.BILINEAR)
        canvas = np.zeros((GRAY_SIZE, GRAY_SIZE), dtype=np.float32)
        top, left = rng.integers(0, GRAY_SIZE - 14 + 1, size=2)
        canvas[top : top + 14, left : left + 14] = np.asarray(small, dtype=np.float32)
        canvas = np.clip(canvas + rng.normal(0, 20, canvas.shape), 0, 255)  # sensor noise
        _save(Image.fromarray(canvas.astype(np.uint8), "L"), root / str(digits.target[i]) / f"{i:05d}.png")
    return str(root)


def rgb_shapes(folder: Path, n: int = 1200, seed: int = 0) -> str:
    """Four outlined or filled shapes of random size, place and colours on a noisy background, 24×24 RGB PNGs."""
    rng = np.random.default_rng(seed)
    root = folder / "rgb_shapes"
    for i in range(n):
        label = SHAPES[i % len(SHAPES)]
        background = tuple(int(c) for c in rng.integers(0, 256, 3))
        image = Image.new("RGB", (RGB_SIZE, RGB_SIZE), background)
        colour = tuple(int((b + rng.integers(80, 176)) % 256) for b in background)  # far from the background
        _draw(ImageDraw.Draw(image), label, rng, colour)
        pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 25, (RGB_SIZE, RGB_SIZE, 3))
        _save(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB"), root / label / f"{i:05d}.png")
    return str(root)


def _draw(draw: ImageDraw.ImageDraw, shape: str, rng: np.random.Generator, colour: tuple[int, ...]) -> None:
    size = int(rng.integers(9, 17))
    x0, y0 = (int(v) for v in rng.integers(1, RGB_SIZE - size, size=2))
    box = (x0, y0, x0 + size, y0 + size)
    fill = colour if rng.random() < 0.5 else None
    if shape == "circle":
        draw.ellipse(box, fill=fill, outline=colour, width=2)
    elif shape == "square":
        draw.rectangle(box, fill=fill, outline=colour, width=2)
    elif shape == "triangle":
        draw.polygon([(x0, y0 + size), (x0 + size, y0 + size), (x0 + size // 2, y0)], fill=fill, outline=colour)
    else:
        mid = size // 2
        draw.line((x0 + mid, y0, x0 + mid, y0 + size), fill=colour, width=3)
        draw.line((x0, y0 + mid, x0 + size, y0 + mid), fill=colour, width=3)


def signals(folder: Path, n: int = 2000, seed: int = 0) -> str:
    """An NPZ of 1-D signals ``x`` (N, 96) in four classes of wave shape (sine, square, sawtooth, triangle),
    random frequency, phase, amplitude and offset, under heavy noise; ``x_test``/``y_test`` a fixed test split."""
    rng = np.random.default_rng(seed)
    total = n + n // 4
    y = np.arange(total) % 4
    t = np.linspace(0, 1, SIGNAL_STEPS, dtype=np.float32)[None]  # (1, T)
    phase = rng.uniform(0, 1, (total, 1)) + rng.uniform(2, 5, (total, 1)) * t  # cycles, (N, T)
    frac = phase % 1.0
    waves = np.stack(
        [np.sin(2 * np.pi * phase), np.sign(np.sin(2 * np.pi * phase)), 2 * frac - 1, 4 * np.abs(frac - 0.5) - 1]
    )  # (4, N, T)
    x = waves[y, np.arange(total)] * rng.uniform(1, 2, (total, 1)) + rng.normal(0, 1, (total, 1))
    x = (x + rng.normal(0, 0.3, x.shape)).astype(np.float32)
    path = folder / "signals.npz"
    np.savez(path, x=x[:n], y=y[:n], x_test=x[n:], y_test=y[n:])
    return str(path)


def tabular(folder: Path, n: int = 2000, seed: int = 0) -> str:
    """A CSV of scikit-learn's ``make_classification``: 20 numeric features (10 informative), 4 classes."""
    import pandas as pd

    x, y = datasets.make_classification(
        n_samples=n, n_features=20, n_informative=10, n_classes=4, class_sep=1.0, flip_y=0.02, random_state=seed
    )
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])]).assign(target=y)
    path = folder / "tabular.csv"
    frame.to_csv(path, index=False)
    return str(path)


def _save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


# ---------------------------------------------------------------- text none of the shipped configs uses
# builtin:python_docs is a shipped config's data, so the section's text cases are these two; a default changed for
# them is also checked on builtin:python_docs, which the section does not use (house rule: not tuned to one bench).

THINGS = {
    "kitchen": ("oven", "kettle", "blender", "toaster", "pan", "fridge", "grater", "whisk"),
    "garden": ("hose", "rake", "mower", "shears", "shed", "sprinkler", "trowel", "wheelbarrow"),
}
PRAISE = ("great", "reliable", "sturdy", "excellent", "handy", "quiet", "solid", "lovely")
COMPLAINT = ("broken", "flimsy", "useless", "noisy", "awful", "leaky", "wobbly", "cheap")
FILLERS = (
    "i bought it last week",
    "my neighbour has one too",
    "it arrived on a tuesday",
    "the box was bigger than i thought",
    "i use it most weekends",
    "it was a present from my sister",
    "i keep it next to the {other}",
    "the shop also sold me a {other}",
)


def review_sentences(folder: Path, n: int = 1500, seed: int = 0) -> str:
    """A CSV (``text``, ``target``) of made-up product reviews in four classes, topic × verdict (kitchen or garden,
    praise or complaint). The verdict is the adjective's, flipped by a ``not`` before it half the time, so word
    order matters; fillers name things of the other topic, so single words do not give the topic away."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        topic, praise = ("kitchen", "garden")[i % 2], (i // 2) % 2 == 0
        other = "garden" if topic == "kitchen" else "kitchen"
        negated = rng.random() < 0.5
        adjective = rng.choice(PRAISE if praise != negated else COMPLAINT)
        words = f"the {rng.choice(THINGS[topic])} is {'not ' if negated else ''}{adjective}"
        fillers = [f.format(other=rng.choice(THINGS[other])) for f in rng.choice(FILLERS, rng.integers(1, 4))]
        parts = [words, *fillers]
        rng.shuffle(parts)
        rows.append((" and ".join(parts), f"{topic}-{'praise' if praise else 'complaint'}"))
    path = folder / "reviews.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    import pandas as pd

    pd.DataFrame(rows, columns=["text", "target"]).to_csv(path, index=False)
    return str(path)


# none of builtin:python_docs' four topics
OTHER_TOPICS = (
    "formatstrings",
    "string-methods",
    "typesseq",
    "execmodel",
    "assignment",
    "comparisons",
    "import",
    "try",
)


def python_topics(folder: Path, n: int = 0, seed: int = 0) -> str:
    """A CSV (``text``, ``target``) of the sentences of eight other topics of Python's reference manual (``pydoc_data``,
    shipped with CPython): real text, none of it in ``builtin:python_docs``. ``n`` and ``seed`` are unused."""
    import re
    from pydoc_data.topics import topics

    import pandas as pd

    rows = [
        (" ".join(sentence.split()), topic)
        for topic in OTHER_TOPICS
        for sentence in re.split(r"(?<=[.!?])\s+", topics[topic])
        if 6 <= len(sentence.split()) <= 60
    ]
    path = folder / "python_topics.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["text", "target"]).to_csv(path, index=False)
    return str(path)
