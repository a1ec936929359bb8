"""The cost of representation measurements on scikit-learn's digits.

1. A small CNN (LeNet-5) trained by the Learner with ``Saturation`` on (every
   Conv2d and Linear output, train and eval passes) vs the same Learner without it;
   at the digits' 8x8 and upscaled to 16x16 (4x the channelwise rows). Target:
   <= 1.10x. Two partial cases show where the cost goes: the probes alone, and
   the probes with each output converted to float64 (no products).
2. Extraction of every layer's latents (train and eval) and one probe per layer,
   from a cold cache, for that 5-layer net: target < 30 s on 2 cores.
"""

import importlib.util
import logging
import os
import tempfile
import time

import torch
import torch.nn.functional as F
from timing import interleave, report
from torch import nn
from torch.utils.data import TensorDataset

from ptera.lab import DataLoaders, Learner, Saturation
from ptera.lab.data import digits
from ptera.lab.models import Lenet5
from ptera.lab.representations import extract_latents, train_probes

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "7"))
EPOCHS = 2
BATCH = int(os.environ.get("BENCH_BATCH", "64"))
CPU = os.environ.get("BENCH_CLOCK", "cpu") == "cpu"  # BENCH_CLOCK=wall for wall time


def upscale(ds, size):
    x, y = ds.tensors
    return TensorDataset(F.interpolate(x, size=(size, size), mode="bilinear"), y)


class ProbesOnly(Saturation):
    """The same probes, delivering each output to nothing: the price of the probes alone."""

    def _record(self, name, out):
        pass


class CopiesOnly(Saturation):
    """The same probes, each output converted to float64 and dropped: the copy that
    every exact measurement needs, without the products."""

    def _record(self, name, out):
        if self._active:
            out.to(torch.float64)


class DelveTracker:
    """delve's tracker as delve's users run it: forward hooks it registers itself,
    its numbers computed after each epoch's eval pass (kept in memory, not written)."""

    def __init__(self, folder):
        self.folder = folder

    def before_fit(self, learn):
        import delve
        from delve.writers import PrintWriter

        logging.getLogger("delve.logger").setLevel(logging.WARNING)  # a line per layer otherwise

        class Quiet(PrintWriter):
            def add_scalar(self, *args, **kwargs):
                pass

        self.tracker = delve.SaturationTracker(
            self.folder, save_to=Quiet(), modules=learn.model, device="cpu"
        )

    def after_epoch(self, learn):
        if not learn.training:
            self.tracker.add_saturations(save=False)


def fit(train, test, size, saturation):
    torch.manual_seed(0)
    cbs = [saturation()] if saturation else []
    dls = DataLoaders.from_datasets(train, test, batch_size=BATCH)
    learn = Learner(Lenet5(size), dls, nn.functional.cross_entropy, lr=1e-2,
                    opt_func=torch.optim.Adam, cbs=cbs)  # fmt: skip
    learn.fit(EPOCHS)


def main():
    torch.set_num_threads(1)
    train, test = digits()
    scratch = tempfile.mkdtemp()
    for size in (8, 16):
        tr, te = (train, test) if size == 8 else (upscale(train, size), upscale(test, size))
        delve = {}
        if importlib.util.find_spec("delve"):
            delve["Learner + delve's tracker"] = lambda tr=tr, te=te, size=size: fit(
                tr, te, size, lambda: DelveTracker(scratch)
            )
        times = interleave(
            {
                "Learner": lambda tr=tr, te=te, size=size: fit(tr, te, size, None),
                "Learner + probes only": lambda tr=tr, te=te, size=size: fit(
                    tr, te, size, ProbesOnly
                ),
                "Learner + float64 copies only": lambda tr=tr, te=te, size=size: fit(
                    tr, te, size, CopiesOnly
                ),
                "Learner + Saturation": lambda tr=tr, te=te, size=size: fit(
                    tr, te, size, Saturation
                ),
                **delve,
            },
            ROUNDS,
            clock=time.process_time if CPU else time.perf_counter,
        )
        report(
            f"LeNet-5 on {size}x{size} digits, batch {BATCH}, {EPOCHS} epochs, {ROUNDS} rounds"
            f" ({'CPU' if CPU else 'wall'} time, one thread)",
            times,
            "Learner",
            {"Learner + Saturation": "<= 1.10"},
        )
        print()

    torch.manual_seed(0)
    model = Lenet5(8)
    dls = DataLoaders.from_datasets(train, test, batch_size=64)
    Learner(model, dls, nn.functional.cross_entropy, lr=1e-2, opt_func=torch.optim.Adam).fit(2)
    for n_jobs in (None, 2):
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            extract_latents(model, train, folder, split="train")
            extract_latents(model, test, folder, split="eval")
            extracted = time.perf_counter() - start
            probes = train_probes(folder, n_jobs=n_jobs)
            total = time.perf_counter() - start
        print(
            f"extraction + probes, 5 layers, n_jobs={n_jobs}: {total:.1f} s"
            f" (extraction {extracted:.1f} s; target < 30 s);"
            f" probe eval accuracy {probes.eval_accuracy.min():.3f}..{probes.eval_accuracy.max():.3f}"
        )


if __name__ == "__main__":
    main()
