"""Per-sample tables: what the model predicted on each sample, and which samples train.

A ``SampleTable`` wraps a dataset (indexing it gives the dataset's items) and
records, per sample id, ``prediction_age`` (samples the model had trained on when
it made its last prediction on this one), ``prediction_loss``, ``exposure_amount``
(how many times it went through the model), ``deny_listed``, ``prediction`` and
``label``. ``AllowedBatches`` draws training batches from the allowed samples only.

Decisions:

* Columns are tensors updated by whole batches (one indexed write per column), so
  the table costs a few tensor operations per batch.
* Predicates are called as the seed writes them, once per sample with plain Python
  values: ``fn(id, age, loss, times, denied, pred, label)``. A sample never
  predicted has age -1, loss NaN, prediction -1.
* ``deny_samples_and_sample_allowed_with_predicate(fn, f)`` denies matching samples
  but at most as many as keep ``allowed >= f * denied`` over the whole table; which
  matches are denied is drawn from the table's seeded generator.
* The batch sampler checks the deny list when it forms each batch, so samples
  denied in the middle of an epoch are never drawn again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.utils.data import Dataset, TensorDataset, default_collate

__all__ = ["AllowedBatches", "OrderedBatches", "SampleTable"]

_ONE = torch.tensor(1)
COLUMNS = (
    "prediction_age",
    "prediction_loss",
    "exposure_amount",
    "deny_listed",
    "prediction",
    "label",
)


class SampleTable(Dataset):
    """A dataset with a per-sample record of predictions, exposure and deny list."""

    def __init__(self, dataset: Dataset, seed: int = 0):
        self.dataset = dataset
        self._labels_known = False
        n = len(dataset)
        self.columns = {
            "prediction_age": torch.full((n,), -1, dtype=torch.int64),
            "prediction_loss": torch.full((n,), float("nan")),
            "exposure_amount": torch.zeros(n, dtype=torch.int64),
            "deny_listed": torch.zeros(n, dtype=torch.bool),
            "prediction": torch.full((n,), -1, dtype=torch.int64),
            "label": torch.full((n,), -1, dtype=torch.int64),
        }
        if (
            isinstance(dataset, TensorDataset)
            and len(dataset.tensors) == 2
            and dataset.tensors[1].dim() == 1
        ):
            self.columns["label"] = dataset.tensors[1].detach().cpu().long().clone()
            self._labels_known = True
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[i]

    @property
    def denied(self) -> torch.Tensor:
        """The deny list: one boolean per sample."""
        return self.columns["deny_listed"]

    def fetch(self, ids: torch.Tensor) -> Any:
        """The batch of samples ``ids`` (collated; a TensorDataset is indexed directly)."""
        if isinstance(self.dataset, TensorDataset):
            return tuple(t[ids] for t in self.dataset.tensors)
        return default_collate([self.dataset[i] for i in ids.tolist()])

    def record(
        self,
        ids: torch.Tensor,
        losses: torch.Tensor,
        predictions: torch.Tensor,
        labels: torch.Tensor,
        age: int,
    ) -> None:
        """Write the predictions of one batch."""
        c = self.columns
        c["prediction_age"][ids] = age
        c["prediction_loss"][ids] = losses.detach().float().cpu()
        c["exposure_amount"].index_put_((ids,), _ONE, accumulate=True)
        c["prediction"][ids] = predictions.detach().cpu().long()
        if not self._labels_known and labels.dim() == 1:
            c["label"][ids] = labels.detach().cpu().long()

    def get_dataframe(self):
        """The table as a pandas DataFrame indexed by sample id."""
        import pandas as pd

        frame = pd.DataFrame({name: col.numpy() for name, col in self.columns.items()})
        frame.index.name = "sample_id"
        return frame

    def _matching(self, predicate: Callable) -> torch.Tensor:
        rows = zip(range(len(self)), *(self.columns[c].tolist() for c in COLUMNS))
        return torch.tensor([bool(predicate(*row)) for row in rows], dtype=torch.bool)

    def deny_samples_with_predicate(self, predicate: Callable) -> int:
        """Deny every sample for which ``predicate(id, age, loss, times, denied, pred, label)``; returns how many are denied."""
        self.denied.logical_or_(self._matching(predicate))
        return int(self.denied.sum())

    def deny_samples_and_sample_allowed_with_predicate(
        self, predicate: Callable, allow_to_denied_factor: float
    ) -> int:
        """Deny matching samples, but no more than keep ``allowed >= allow_to_denied_factor * denied``."""
        if not allow_to_denied_factor > 0:
            raise ValueError(f"allow_to_denied_factor must be > 0, not {allow_to_denied_factor!r}")
        candidates = torch.nonzero(self._matching(predicate) & ~self.denied).flatten()
        already = int(self.denied.sum())
        budget = max(0, int(len(self) // (1 + allow_to_denied_factor)) - already)
        if len(candidates) > budget:
            order = torch.randperm(len(candidates), generator=self.generator)
            candidates = candidates[order[:budget]]
        self.denied[candidates] = True
        return int(self.denied.sum())

    def denylist_samples(self, ids: Iterable[int]) -> None:
        """Deny the samples ``ids``."""
        self.denied[self._ids(ids)] = True

    def allowlist_samples(self, ids: Iterable[int] | None) -> None:
        """Allow the samples ``ids`` again, or every sample with ``None``."""
        if ids is None:
            self.denied.zero_()
        else:
            self.denied[self._ids(ids)] = False

    def _ids(self, ids: Iterable[int]) -> torch.Tensor:
        values = sorted(int(i) for i in ids)
        if values and not (0 <= values[0] and values[-1] < len(self)):
            bad = [v for v in values if not 0 <= v < len(self)]
            raise IndexError(
                f"sample ids {bad} are out of range: the table has {len(self)} samples"
            )
        return torch.tensor(values, dtype=torch.long)

    def state_dict(self) -> dict:
        """The columns and the generator's state (for checkpoints)."""
        return {
            "columns": {k: v.clone() for k, v in self.columns.items()},
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a table saved by ``state_dict`` (of a dataset of the same length)."""
        if len(state["columns"]["label"]) != len(self):
            raise ValueError(
                f"the saved table has {len(state['columns']['label'])} samples, this one {len(self)}"
            )
        self.columns = {k: v.clone() for k, v in state["columns"].items()}
        self.generator.set_state(state["generator"])


class AllowedBatches:
    """Shuffled batches of allowed sample ids; ``next()`` is ``None`` at the end of an epoch."""

    def __init__(self, table: SampleTable, batch_size: int, seed: int = 0):
        self.table = self.dataset = table
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.randperm(len(table), generator=self.generator)
        self.pos = 0

    def __len__(self) -> int:
        """Batches in a full epoch over the allowed samples."""
        allowed = len(self.table) - int(self.table.denied.sum())
        return -(-allowed // self.batch_size)

    def new_epoch(self) -> None:
        """Start a new shuffled pass over the samples."""
        self.order = torch.randperm(len(self.table), generator=self.generator)
        self.pos = 0

    def next(self) -> torch.Tensor | None:
        """The next batch of allowed ids, or ``None`` when this epoch has none left."""
        chunk = self.order[self.pos : self.pos + self.batch_size]
        if len(chunk) == self.batch_size and not self.table.denied[chunk].any():
            self.pos += self.batch_size  # the common case: nothing denied in the next batch
            return chunk
        rest = self.order[self.pos :]
        where = torch.nonzero(~self.table.denied[rest]).flatten()[: self.batch_size]
        if len(where) == 0:
            self.pos = len(self.order)
            return None
        self.pos += int(where[-1]) + 1
        return rest[where]

    def state_dict(self) -> dict:
        """This epoch's order, the position in it and the generator's state."""
        return {
            "order": self.order.clone(),
            "pos": self.pos,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore an order saved by ``state_dict``."""
        self.order, self.pos = state["order"].clone(), int(state["pos"])
        self.generator.set_state(state["generator"])


class OrderedBatches:
    """Batches of every sample id in order (denied ones too); ``next()`` cycles through them."""

    def __init__(self, table: SampleTable, batch_size: int):
        self.table = self.dataset = table
        self.batch_size = batch_size
        self.pos = 0

    def __len__(self) -> int:
        return -(-len(self.table) // self.batch_size)

    def all(self) -> list[torch.Tensor]:
        """Every batch of ids, in order (one full evaluation)."""
        return list(torch.arange(len(self.table)).split(self.batch_size))

    def next(self) -> torch.Tensor:
        """The next batch of ids, starting over after the last."""
        if self.pos >= len(self.table):
            self.pos = 0
        ids = torch.arange(self.pos, min(self.pos + self.batch_size, len(self.table)))
        self.pos += len(ids)
        return ids
