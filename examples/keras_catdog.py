"""Make the Keras model file a cats-and-dogs service starts from: a keras.applications base with a
new ``Dense(2, softmax)`` head, fine-tuned on your photos, saved as ``.h5`` (or ``.keras``).

    python examples/keras_catdog.py --out catdog.h5                      # build only (offline)
    python examples/keras_catdog.py --out catdog.h5 --data photos/ --weights imagenet --epochs 3

``--data`` is a folder with one subfolder per class (``photos/cat/*.jpg``, ``photos/dog/*.jpg``);
the base stays frozen and only the head trains, as in the Keras transfer-learning guide.
``--weights imagenet`` downloads the ImageNet base from Keras' storage (what a Colab notebook
does); the default, ``none``, keeps everything offline with a random base, so the answers are
arbitrary but every imgclf command runs as written. The class names are written beside the model
(``catdog.labels.txt``), where ``imgclf serve --model catdog.h5`` finds them.

Needs the keras extra: pip install 'imgclf[keras]'.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

BASES = {
    # name: (keras.applications constructor, its preprocess_input module, input side)
    "vgg16": ("VGG16", "vgg16", 224),
    "mobilenet_v2": ("MobileNetV2", "mobilenet_v2", 224),
    "resnet50": ("ResNet50", "resnet50", 224),
}


def load_folder(folder: Path, size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Class subfolders -> (N, size, size, 3) uint8 pixels, labels, class names (sorted, as Keras'
    image_dataset_from_directory orders them). Pixels are resized the way imgclf will serve them."""
    from imgclf.images import ImageDecodeError, decode_file, image_files
    from imgclf.preprocess import caffe_spec, resize_and_crop

    spec = caffe_spec(size)  # the geometry part: keras.utils.load_img's squash, nearest
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise SystemExit(f"{folder} needs at least two class subfolders (e.g. cat/ and dog/)")
    pixels, labels = [], []
    for index, name in enumerate(classes):
        for path in image_files(folder / name):
            try:
                pixels.append(resize_and_crop(decode_file(path), spec))
            except ImageDecodeError as exc:
                print(f"skipping {path}: {exc}", file=sys.stderr)
                continue
            labels.append(index)
    if not pixels:
        raise SystemExit(f"no readable images under {folder}")
    return np.stack(pixels), np.asarray(labels), classes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="model file to write (.h5 or .keras)")
    parser.add_argument("--base", choices=sorted(BASES), default="vgg16")
    parser.add_argument("--weights", choices=["none", "imagenet"], default="none",
                        help="base weights: 'imagenet' downloads Keras' file; 'none' stays offline (random)")
    parser.add_argument("--data", type=Path, help="folder of class subfolders to fine-tune the head on")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--classes", default="cat,dog", help="class names when there is no --data (default cat,dog)")
    args = parser.parse_args(argv)
    if args.out.suffix not in (".h5", ".keras"):
        parser.error("--out must end in .h5 or .keras")

    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    constructor, module, size = BASES[args.base]
    app = getattr(keras.applications, constructor)
    preprocess_input = getattr(keras.applications, module).preprocess_input
    keras.utils.set_random_seed(0)
    base = app(weights=None if args.weights == "none" else "imagenet", include_top=False,
               input_shape=(size, size, 3))
    base.trainable = False
    data = load_folder(args.data, size) if args.data else None
    classes = data[2] if data else [c.strip() for c in args.classes.split(",") if c.strip()]
    x = keras.layers.Flatten()(base.output) if args.base == "vgg16" else keras.layers.GlobalAveragePooling2D()(
        base.output)
    outputs = keras.layers.Dense(len(classes), activation="softmax", name="predictions")(x)
    model = keras.Model(base.input, outputs, name=f"{args.base}_{'_'.join(classes)}"[:60])

    if data is not None:
        pixels, labels, _ = data
        print(f"fine-tuning the head on {len(labels)} images of {len(classes)} classes: {', '.join(classes)}")
        model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        model.fit(preprocess_input(pixels.astype(np.float32)), labels, epochs=args.epochs, batch_size=16,
                  shuffle=True, verbose=2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    model.save(args.out)
    labels_file = args.out.with_name(f"{args.out.stem}.labels.txt")
    labels_file.write_text("\n".join(classes) + "\n", encoding="utf-8")
    print(f"wrote {args.out} ({args.base} base, {'fine-tuned' if data else 'untrained'} "
          f"{len(classes)}-class head) and {labels_file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
