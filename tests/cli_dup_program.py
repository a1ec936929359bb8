"""Two functions declaring the same hyperparameter with different defaults."""

from ptera import default, ptera, tag


@ptera
def enc(x):
    # Encoder learning rate
    lr: tag.HyperParameter & float = default(0.1)
    return x * lr


@ptera
def dec(x):
    # Decoder learning rate
    lr: tag.HyperParameter & float = default(0.2)
    width: tag.HyperParameter & int = default(4)
    return x * lr + width


@ptera
def model():
    depth: tag.HyperParameter & int = default(2)
    width: tag.HyperParameter & int = default(4)
    return enc(1.0), dec(1.0), depth, width
