"""Zero-shot transfer of an image-text model (CLIP): no labels, no fitting, only the two towers and the tokenizer.

The target is a prepared corpus of pictures with captions and labels (tuxpaint_captions: an `image`, a `text` and a
`label` field, the label's class names as prompt `words`), tokenised with the pretraining corpus's tokenizer,
which the exported file carries. On its test split:
- classification: each class is the mean of its prompts' normalised text embeddings ("a picture of a {}." and the
  other TEMPLATES, as CLIP ensembles its prompts), re-normalised; a picture goes to the class of highest cosine
  similarity. `zeroshot_top1` and `zeroshot_balanced`, against chance 1 / classes and the majority class;
- retrieval: every picture against every caption of the split, recall@1/5/10 in both directions
  (`retrieval/image_to_text_r1`, ..., `retrieval/text_to_image_r10`). Variants of one stamp share a caption, so a
  retrieved item whose caption (its token ids) equals the query's counts as a match. Chance is the expected recall
  of a random ranking, query by query: 1 - C(N - m, K) / C(N, K) for m matching items among N;
- `prompt_words_split`: how many of the class words the tokenizer splits into several pieces (one trained on file
  names may never have seen them), beside `prompt_words`.

Names follow the transfer scheme: `<target>/zeroshot_top1`, `<target>/retrieval/...`, the random-init pair of
towers under `<target>/random_init/...`, chance under `<target>/chance/...`.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from sslscale import storage
from sslscale.data import corpus
from sslscale.data.modalities import data_field, label_names, labelled
from sslscale.data.modalities.text import SEP, TOKENIZER
from sslscale.errors import SslscaleError

TEMPLATES = ("a picture of a {}.", "a drawing of a {}.", "a photo of a {}.", "clip art of a {}.", "a {}.")
RECALL_AT = (1, 5, 10)


def applies(model) -> bool:
    """Whether `model` (an exported method, export.load_model) has an image and a text tower to score zero-shot."""
    return callable(getattr(model, "embed_images", None)) and callable(getattr(model, "embed_texts", None))


def has_captions(target: str) -> bool:
    """Whether a target holds pictures with captions and labels (zero-shot needs them; kNN and the probe do not)."""
    return _captioned(corpus.load_manifest(corpus.resolve(target)))


def _captioned(manifest: dict) -> bool:
    return {"image", "text"} <= {e.get("kind") for e in manifest["fields"].values()} and labelled(manifest)


def load_pairs(target: str, tokenizer) -> dict:
    """The target's test split: pictures, caption ids, labels, which items share a caption (`same`), class words;
    one line when it is not an image-text
    target with labels, or was tokenised with another tokenizer than the model's."""
    folder = corpus.resolve(target)
    manifest = corpus.load_manifest(folder)
    if not _captioned(manifest) or "test" not in manifest["splits"]:
        raise SslscaleError(f"zero-shot target {folder} needs pictures, captions, labels and a test split: prepare "
                            "one like `sslscale data prepare tuxpaint_captions --tokenizer CORPUS`")
    text = data_field(manifest, folder, "text")
    if tokenizer.to_str().encode() != storage.read_bytes(storage.join(folder, text.entry.get("tokenizer", TOKENIZER))):
        raise SslscaleError(f"zero-shot target {folder} was tokenised with another tokenizer than the model's: "
                            "prepare it with `sslscale data prepare SOURCE --tokenizer <the pretraining corpus>`")
    _, images, labels = corpus.read_split(folder, "test", kind="image")
    _, captions, _ = corpus.read_split(folder, "test", with_labels=False, kind="text")
    label = next(e for e in manifest["fields"].values() if e.get("kind") == "label")
    return {"name": storage.name(folder), "images": images, "captions": captions, "labels": labels,
            "same": _same_caption(captions), "words": label.get("words") or label_names(manifest),
            "image": data_field(manifest, folder, "image"), "text": text}


def prompt_ids(tokenizer, words: list[str], length: int) -> np.ndarray:
    """Token ids (len(words) x len(TEMPLATES), length) of every template filled with every word, each its ids then
    [SEP] (as captions are prepared), cut to `length` and padded with 0."""
    out = np.zeros((len(words) * len(TEMPLATES), length), np.int64)
    for row, prompt in zip(out, (t.format(w) for w in words for t in TEMPLATES)):
        ids = tokenizer.encode(prompt, add_special_tokens=False).ids[:length - 1] + [SEP]
        row[:len(ids)] = ids
    return out


def split_words(tokenizer, words: list[str]) -> int:
    """How many of `words` the tokenizer cuts into several tokens (after a space, as in a prompt)."""
    return sum(len(tokenizer.encode(f" {w}", add_special_tokens=False).ids) > 1 for w in words)


@torch.no_grad()
def _embed(model, pairs: dict, prompts: np.ndarray, batch_size: int) -> tuple[torch.Tensor, ...]:
    """(pictures', captions' and class embeddings), L2-normalised, float32."""
    model.eval()
    images = torch.cat([model.embed_images(pairs["image"].to_encoder(pairs["images"][i:i + batch_size]))[1]
                        for i in range(0, len(pairs["images"]), batch_size)])
    def texts(ids):
        return torch.cat([model.embed_texts(pairs["text"].to_encoder(ids[i:i + batch_size]))
                          for i in range(0, len(ids), batch_size)])
    per_prompt = texts(prompts).reshape(-1, len(TEMPLATES), images.shape[1])
    classes = torch.nn.functional.normalize(per_prompt.mean(1), dim=1)
    return images.float(), texts(pairs["captions"]).float(), classes.float()


def recall(similarity: torch.Tensor, same: torch.Tensor, k: int) -> float:
    """The share of queries (rows) with a match (same[i, j]) among their k most similar items."""
    top = similarity.topk(min(k, similarity.shape[1]), dim=1).indices
    return float(same.gather(1, top).any(1).float().mean())


def chance_recall(same: torch.Tensor, k: int) -> float:
    """The expected recall@k of a random ranking: per query 1 - C(N - m, k) / C(N, k), m its matches of N (k at
    most N)."""
    n = same.shape[1]
    k = min(k, n)  # a split of fewer than k items: all of them
    return float(np.mean([1 - math.comb(n - m, k) / math.comb(n, k) for m in same.sum(1).tolist()]))


def _scores(model, pairs: dict, prompts: np.ndarray, batch_size: int) -> dict[str, float]:
    from sslscale.evaluation.transfer import balanced_accuracy

    images, captions, classes = _embed(model, pairs, prompts, batch_size)
    labels = torch.as_tensor(pairs["labels"])
    guess = (images @ classes.T).argmax(1)
    out = {"zeroshot_top1": float((guess == labels).float().mean()),
           "zeroshot_balanced": balanced_accuracy(guess, labels, len(pairs["words"]))}
    for k in RECALL_AT:
        out[f"retrieval/image_to_text_r{k}"] = recall(images @ captions.T, pairs["same"], k)
        out[f"retrieval/text_to_image_r{k}"] = recall(captions @ images.T, pairs["same"], k)
    return out


def _same_caption(captions: np.ndarray) -> torch.Tensor:
    """same[i, j]: item j's caption is item i's (equal token ids)."""
    caption = torch.as_tensor(np.unique(captions, axis=0, return_inverse=True)[1].reshape(-1))
    return caption[:, None] == caption[None, :]


def evaluate(model, tokenizer, target: str, *, baseline: bool = True, seed: int = 0,
             batch_size: int = 512) -> dict[str, float]:
    """Zero-shot scores of `model` (with `embed_images` and `embed_texts`) on `target`, keyed as the module
    docstring says; with the baseline also a random-init pair of towers of the same shapes and chance."""
    from sslscale.training.export import fresh_like

    pairs = load_pairs(target, tokenizer)
    prompts = prompt_ids(tokenizer, pairs["words"], pairs["text"].size)
    name = pairs["name"]
    out = {f"{name}/{k}": v for k, v in _scores(model, pairs, prompts, batch_size).items()}
    out[f"{name}/prompt_words"] = float(len(pairs["words"]))
    out[f"{name}/prompt_words_split"] = float(split_words(tokenizer, pairs["words"]))
    if baseline:
        torch.manual_seed(seed)
        out.update({f"{name}/random_init/{k}": v
                    for k, v in _scores(fresh_like(model), pairs, prompts, batch_size).items()})
        out[f"{name}/chance/zeroshot_top1"] = 1 / len(pairs["words"])
        for k in RECALL_AT:
            out[f"{name}/chance/retrieval/image_to_text_r{k}"] = chance_recall(pairs["same"], k)
            out[f"{name}/chance/retrieval/text_to_image_r{k}"] = chance_recall(pairs["same"].T, k)
    return out


def evaluate_export(path: str, tcfg) -> dict[str, float]:
    """Zero-shot scores of an exported method with an image and a text tower (export.load_model) on tcfg.target,
    where the target holds captioned pictures; {} for an encoder alone or another target (the probes still score
    the encoder)."""
    from sslscale.training.export import has_method, load_model, load_tokenizer

    if not has_method(path) or not has_captions(tcfg.target):
        return {}
    model = load_model(path)
    if not applies(model):
        return {}
    print(f"zero-shot on {tcfg.target}: prompts for its categories, retrieval both ways...", flush=True)
    return evaluate(model, load_tokenizer(path), tcfg.target, baseline=tcfg.baseline, seed=tcfg.seed,
                    batch_size=tcfg.batch_size)
