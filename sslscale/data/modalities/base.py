"""What every kind of data answers (`Modality`): the interface the core asks, so that it never guesses a kind.

A Modality is built from one manifest field (its name and its entry) and is plain data, picklable: Ray Data
tasks receive it with the stream's arguments. Nothing here imports torch at module level (Ray Data's tasks import
this package); the methods that make tensors import it inside.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sslscale.errors import SslscaleError


@dataclass(frozen=True)
class Layout:
    """What a pretext method asks one field's views to make: typed options of that field's kind (image.ImageLayout,
    text.TextLayout), so an option a kind does not have is an error naming it, never a key silently dropped.
    `fields` names the batch fields the views make, each with its engine kind (views.KINDS: pixels, ids)."""

    def fields(self) -> dict[str, str]:
        raise NotImplementedError


class Modality:
    """One data field of a corpus's records, of kind `kind`.

    Shards: `member` is the field's WebDataset member (`<name>.<encoding>`) and Parquet column (`name`); `encode`
    turns a source's sample into its bytes and `decode` them back into its array, `stack` a list of those into a
    batch (zero rows: `blank`'s shape). Views: `views` makes the fields a pretext method's typed `layout` names
    (methods.view_layouts). Encoders: `encoder_input`
    is the encoder's input spec from the manifest (an encoder class says the kind it takes: `modality`),
    `to_encoder` turns a batch into what an encoder's forward takes. Transfer: `baseline` scores the data without
    a network, `labelled` makes a classifier's batch (probes, fine-tuning), `check_fits` refuses in one line data an
    encoder cannot take."""

    kind = ""
    layout = Layout  # the Layout class a method hands `views` for a field of this kind
    noun = ""  # what a corpus of them holds, for messages: "images", "text"
    encoding = ""  # the member's default encoding, for manifests that leave it out
    labelled_field = ""  # the batch field `labelled` makes (a Classifier reads it)
    labelled_input = ""  # its views.KINDS kind, for the engine: "pixels" or "ids"

    def __init__(self, name: str, entry: dict):
        self.name, self.entry = name, dict(entry)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    @property
    def member(self) -> str:
        return f"{self.name}.{self.entry.get('encoding', self.encoding)}"

    # ------------------------------------------------------------------ samples
    def encode(self, sample) -> bytes:
        """One sample's value (as a source yields it) -> its member's bytes in a shard (corpus.prepare)."""
        raise NotImplementedError

    def decode(self, data: bytes) -> np.ndarray:
        """One sample's member bytes -> its array; SslscaleError (one line) when they are not such a sample."""
        raise NotImplementedError

    def decoded_or_none(self, data: bytes) -> np.ndarray | None:
        try:
            return self.decode(data)
        except SslscaleError:
            return None

    def blank(self) -> np.ndarray:
        """One sample of zeros: its shape and dtype."""
        raise NotImplementedError

    def stack(self, samples: list[np.ndarray]) -> np.ndarray:
        blank = self.blank()
        return np.stack(samples) if samples else np.zeros((0, *blank.shape), blank.dtype)

    def describe(self) -> str:
        """What a sample is, for messages: "a 1-channel image", "token ids"."""
        raise NotImplementedError

    @property
    def size(self) -> int:
        """The length a method's layout is sized by (methods.view_layout): an image's side, a passage's length."""
        raise NotImplementedError

    # ------------------------------------------------------------------ views
    def view_options(self, cfg) -> dict:
        """The keyword arguments `views` takes besides the layout, from the run's config (picklable)."""
        return {}

    def views(self, samples: np.ndarray, ids: np.ndarray, *, seed: int, epoch: int, layout: Layout,
              **options) -> dict[str, np.ndarray]:
        """The fields `layout` names (Layout.fields) for a batch of samples and their ids, random as a function of
        (seed, epoch, id)."""
        raise NotImplementedError

    def check_layout(self, layout: Layout, method: str) -> None:
        """One line when `method` hands this field a layout of another kind."""
        if not isinstance(layout, self.layout):
            raise SslscaleError(f"method.name={method} asks the {self.kind} field {self.name!r} for "
                                f"{type(layout).__name__} views; {self.kind} fields make {self.layout.__name__}")

    # ------------------------------------------------------------------ encoders and transfer
    def encoder_input(self) -> dict:
        raise NotImplementedError

    def check_model(self, model_cfg, where: str) -> None:
        """One line when the run's model (the model.* keys) cannot take this field's samples (of corpus `where`)."""

    def to_encoder(self, batch: np.ndarray):
        """A batch of samples (`stack`'s) -> the tensor an encoder of this kind takes."""
        raise NotImplementedError

    def to_engine(self, batch: np.ndarray) -> np.ndarray:
        """A batch of samples -> the `labelled_field` array the engine moves to the device (Engine.to_device)."""
        raise NotImplementedError

    def check_fits(self, encoder, batch: np.ndarray, where: str) -> None:
        raise NotImplementedError

    def check_target(self, target: "Modality", target_dir: str, corpus_dir: str | None, where: str) -> None:
        """One line when a target's field `target`, of this kind, cannot be scored by an encoder trained on this
        field (of corpus_dir, where given)."""

    def baseline(self, train_x: np.ndarray, test_x: np.ndarray):
        """(name, train features, test features): the scores' no-learning baseline."""
        raise NotImplementedError

    def labelled(self, samples: np.ndarray, view_ids: np.ndarray, *, seed: int, views: dict) -> dict[str, np.ndarray]:
        """A classifier's batch field {labelled_field: ...} for these samples: fine-tuning's training views, with
        augmentation strengths `views` (ViewSpec fields) where the kind has augmentations."""
        raise NotImplementedError
