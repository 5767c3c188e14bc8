"""Downstream evaluation: how good an encoder's frozen features are on a labelled target (the transfer score).

A target is a prepared corpus with labels and a train and a test split; `fmnist` and `digits` are built-in names
that are prepared on first use under $SSLSCALE_DATA (default ./data). Scores: kNN (k neighbours by cosine
similarity, votes weighted by exp(sim / 0.07) as in DINO/InstDisc) and a linear probe (softmax regression on
standardised features, L-BFGS) — both fit on the train split and scored on the whole test split. Baselines through the
same code: a randomly initialised encoder of the same architecture, and the no-learning baseline of the target's
declared data field (modalities: raw pixels for images; TF-IDF of the token ids for text, idf from the train
split). A text target holds token ids from the pretraining corpus's tokenizer (docs/text.md).

Label efficiency: each protocol is also fit on stratified, seeded label fractions of the train split (`label_subset`;
the test split stays whole). Score names: `<target>/<protocol>_top1` on the whole train split (the caller adds the
`transfer/` prefix), `<target>/<protocol>_top1/frac<f>` on a fraction f as written, baselines as
`<target>/random_init/...` and `<target>/pixels/...` (text: `<target>/tfidf/...`).
"""
from __future__ import annotations

import os
import re
import time

import numpy as np
import torch
import torch.nn.functional as F

from sslscale import plots, storage
from sslscale.checks import list_items, score_name, transfer_checks
from sslscale.config import Config
from sslscale.data import corpus
from sslscale.data.modalities import KINDS, Modality, data_field, data_fields, label_names, labelled
from sslscale.data.splits import stratified_pick
from sslscale.encoders import from_spec
from sslscale.errors import SslscaleError

FEATURE_PROTOCOLS = ("knn", "linear")  # fit on frozen features
TRAINED_PROTOCOLS = ("finetune", "scratch")  # train the network (finetune.py)


def _labelled(target: str) -> tuple[str, dict]:
    """(folder, manifest) of a target; one line when it has no labels or lacks a train or test split."""
    folder = corpus.resolve(target)
    manifest = corpus.load_manifest(folder)
    if not labelled(manifest) or not {"train", "test"} <= set(manifest["splits"]):
        raise SslscaleError(f"target {folder} needs labels and a train and a test split; prepare a labelled source")
    return folder, manifest


def check_target(tcfg, field: Modality, corpus_dir: str | None = None, required: bool = True) -> None:
    """Before training: one line when tcfg.target cannot score an encoder of the pretraining corpus's data `field`
    (of corpus_dir): it is missing, has no labels or splits, holds another kind of data, or data the encoder
    cannot take (images of another size, text of another tokenizer or longer). A tower's field (required=False)
    is checked where the target holds its kind (zero-shot reads it), and passes where it does not."""
    chosen(tcfg)
    folder, manifest = _labelled(tcfg.target)
    kinds = {f.kind: f for f in data_fields(manifest, folder).values()}
    if field.kind not in kinds and not required:
        return
    if field.kind not in kinds:
        holds = " and ".join(f.noun for f in kinds.values())
        raise SslscaleError(f"transfer.target {tcfg.target} holds {holds} but the encoder takes {field.noun}: "
                            f"pick a target of {field.noun} (or transfer.enabled=false)")
    target = data_field(manifest, folder, field.kind)
    field.check_target(target, folder, corpus_dir, tcfg.target)


def load_target(target: str, train_samples: int = 0, seed: int = 0, kind: str | None = None) -> dict:
    """{"name", "classes", "names", "seed", "field": the target's data field (a modalities.Modality), "train":
    (its samples: images uint8 (N, H, W, C), token ids (N, L), labels), "test": (...)}; with train_samples > 0 the
    train split is a seeded random subset of that many samples (sweeps fit kNN and the probe on it to stay fast),
    the test whole; `seed` also draws the label fractions (`scores`) from that train split. `kind`: the data field
    read (an encoder's modality; None: the target's one data field)."""
    folder, manifest = _labelled(target)
    names = label_names(manifest)
    data = {"name": storage.name(folder), "classes": len(names), "names": names, "seed": seed,
            "field": data_field(manifest, folder, kind)}
    for split in ("train", "test"):
        _, images, labels = corpus.read_split(folder, split, kind=kind)
        data[split] = (images, torch.as_tensor(labels))
    images, labels = data["train"]
    if 0 < train_samples < len(labels):
        keep = np.sort(np.random.default_rng(seed).choice(len(labels), train_samples, replace=False))
        data["train"] = (images[keep], labels[keep])
    return data


def chosen(tcfg) -> tuple[list[str], list[str]]:
    """(protocols, label fractions as written) of tcfg; one line naming the key when either is malformed."""
    for key, ok, allowed in transfer_checks(tcfg):
        if not ok:
            raise SslscaleError(f"bad value for {key}: must be {allowed}")
    return list_items(tcfg.protocols), list_items(tcfg.label_fractions)


def label_subset(labels: np.ndarray, fraction: float, seed: int, *, classes: int = 0,
                 target: str = "target") -> np.ndarray:
    """Sorted indices of a stratified, seeded subset of `labels` (int, (N,)): round(fraction x class count) of
    each class, at least 1; fraction 1.0 returns all of them. With one seed a smaller fraction's subset lies inside
    a larger one's (splits.stratified_pick). Every class in range(classes) must be present unless fraction is 1."""
    if not 0 < fraction <= 1:
        raise SslscaleError(f"label fraction {fraction} for the {target} train split is outside (0, 1]: "
                            "use fractions like 0.01,0.1,1.0 in transfer.label_fractions")
    if fraction == 1:
        return np.arange(len(labels))
    counts = np.bincount(labels, minlength=classes)  # (C,)
    if not len(counts) or counts.min() < 1:
        missing = int(counts.argmin()) if len(counts) else 0
        raise SslscaleError(f"label fraction {fraction} of the {target} train split ({len(labels)} samples) cannot "
                            f"keep a sample of class {missing}: it has none; use a larger transfer.train_samples "
                            "(or 0) or a target with every class in its train split")
    return stratified_pick(labels, np.maximum(1, np.round(fraction * counts)).astype(np.int64), seed)


def check_fits(encoder: torch.nn.Module, field: Modality, samples: np.ndarray) -> None:
    """One line when the encoder takes another kind of data than `field`, or samples of it that it cannot take
    (images of another size, passages longer than its positions)."""
    if encoder.modality != field.kind:
        raise SslscaleError(f"the encoder takes {KINDS[encoder.modality].noun} but the target holds {field.noun}: "
                            f"pick a target of {KINDS[encoder.modality].noun}")
    field.check_fits(encoder, samples)


@torch.no_grad()
def features(encoder: torch.nn.Module, field: Modality, samples: np.ndarray, batch_size: int = 512) -> torch.Tensor:
    """Samples of `field` (images uint8 (N, H, W, C), token ids (N, L)) -> float features (N, D), encoder in eval
    mode."""
    check_fits(encoder, field, samples)
    encoder.eval()
    out = []
    for i in range(0, len(samples), batch_size):
        out.append(encoder(field.to_encoder(samples[i:i + batch_size])).float())
    return torch.cat(out)


@torch.no_grad()
def knn_predictions(train_f, train_y, test_f, *, k: int = 20, classes: int, temperature: float = 0.07,
                    chunk: int = 1024) -> torch.Tensor:
    """Weighted kNN: each test point votes over its k most cosine-similar train points, weight exp(sim/T);
    returns the predicted classes (N_test,)."""
    train_f, test_f = F.normalize(train_f, dim=1), F.normalize(test_f, dim=1)
    k = min(k, len(train_f))  # a small label fraction may hold fewer than k train points
    predicted = []
    for i in range(0, len(test_f), chunk):
        sim, idx = (test_f[i:i + chunk] @ train_f.T).topk(k, dim=1)  # (c, k)
        votes = torch.zeros(len(sim), classes).scatter_add_(1, train_y[idx], (sim / temperature).exp())
        predicted.append(votes.argmax(1))
    return torch.cat(predicted)


def knn_accuracy(train_f, train_y, test_f, test_y, **kw) -> float:
    return float((knn_predictions(train_f, train_y, test_f, **kw) == test_y).float().mean())


def linear_probe_accuracy(train_f, train_y, test_f, test_y, **kw) -> float:
    return float((linear_probe_predictions(train_f, train_y, test_f, **kw) == test_y).float().mean())


def linear_probe_predictions(train_f, train_y, test_f, *, classes: int, iters: int = 100,
                             l2: float = 1e-4) -> torch.Tensor:
    """Softmax regression on standardised features, fit full-batch with L-BFGS (deterministic, no batch-size
    or learning-rate to tune) and an L2 penalty; returns the predicted test classes (N_test,)."""
    mean, std = train_f.mean(0), train_f.std(0) + 1e-6
    train_f, test_f = (train_f - mean) / std, (test_f - mean) / std
    probe = torch.nn.Linear(train_f.shape[1], classes)
    torch.nn.init.zeros_(probe.weight)
    torch.nn.init.zeros_(probe.bias)
    opt = torch.optim.LBFGS(probe.parameters(), max_iter=iters, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(probe(train_f), train_y) + l2 * probe.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return probe(test_f).argmax(1)


def balanced_accuracy(guess: torch.Tensor, truth: torch.Tensor, classes: int) -> float:
    """The mean over the classes in `truth` of each one's recall (top-1 when every class is as common)."""
    hits = torch.zeros(classes).scatter_add_(0, truth, (guess == truth).float())
    count = torch.bincount(truth, minlength=classes).float()
    return float((hits[count > 0] / count[count > 0]).mean())


def majority(train_y: torch.Tensor, test_y: torch.Tensor) -> float:
    """Test accuracy of always guessing the train split's most common class (0 for an empty split)."""
    if not len(train_y) or not len(test_y):
        return 0.0
    return float((test_y == torch.bincount(train_y).argmax()).float().mean())


def _predict(protocol: str, train_f, train_y, test_f, classes: int, tcfg) -> torch.Tensor:
    if protocol == "knn":
        return knn_predictions(train_f, train_y, test_f, k=tcfg.knn_k, classes=classes)
    return linear_probe_predictions(train_f, train_y, test_f, iters=tcfg.probe_iters, classes=classes)


def scores(train_f, test_f, data: dict, tcfg, predicted: dict | None = None) -> dict[str, float]:
    """Test accuracy of each of tcfg.protocols fit on each of tcfg.label_fractions of the train features
    (label_subset, seeded by data["seed"]), keyed `<protocol>_top1` for fraction 1 and `<protocol>_top1/frac<f>`
    (f as written) for the others, and its balanced accuracy beside it (`<protocol>_balanced`, for targets whose
    classes are unevenly covered); the test split is always whole. `predicted`, when given, receives each
    score's predicted test classes under the same key."""
    protocols, fractions = chosen(tcfg)
    (_, train_y), (_, test_y) = data["train"], data["test"]
    result = {}
    for text in fractions:
        keep = torch.from_numpy(label_subset(train_y.numpy(), float(text), data["seed"],
                                             classes=data["classes"], target=data["name"]))
        for protocol in (p for p in protocols if p in FEATURE_PROTOCOLS):
            guess = _predict(protocol, train_f[keep], train_y[keep], test_f, data["classes"], tcfg)
            result[score_name(protocol, text)] = float((guess == test_y).float().mean())
            result[score_name(protocol, text).replace("_top1", "_balanced")] = balanced_accuracy(
                guess, test_y, data["classes"])
            if predicted is not None:
                predicted[score_name(protocol, text)] = guess
    return result


def evaluate(encoder: torch.nn.Module, tcfg, *, baseline: bool | None = None, cfg=None) -> dict[str, float]:
    """Scores of `encoder` on tcfg.target, keyed `<target>/<metric>` with the metrics of `scores` and `trained`;
    with the baseline also `<target>/random_init/<metric>` and `<target>/pixels/<metric>` (kNN and linear only).
    `cfg` gives fine-tuning its engine settings (default: Config())."""
    return _evaluate(encoder, tcfg, baseline=baseline, cfg=cfg)[0]


def _evaluate(encoder: torch.nn.Module, tcfg, *, baseline: bool | None = None, cfg=None,
              out_dir: str | None = None) -> tuple[dict[str, float], list[str]]:
    """(evaluate's scores, the `pictures` written to out_dir: none without it)."""
    chosen(tcfg)  # a malformed key fails before the features are computed
    data = load_target(tcfg.target, tcfg.train_samples, tcfg.seed, encoder.modality)
    (train_x, _), (test_x, _), field = data["train"], data["test"], data["field"]
    name = data["name"]
    check_fits(encoder, field, train_x)
    frozen = bool(set(chosen(tcfg)[0]) & set(FEATURE_PROTOCOLS))  # fine-tuning only: no features, no baselines
    encoders = {"": encoder} if frozen else {}
    if frozen and (tcfg.baseline if baseline is None else baseline):
        torch.manual_seed(tcfg.seed)
        encoders["random_init/"] = from_spec(encoder.spec())
    result, predicted, test_f = {f"{name}/majority": majority(data["train"][1], data["test"][1])}, {}, None
    for prefix, enc in encoders.items():
        got_test = features(enc, field, test_x, tcfg.batch_size)
        got = scores(features(enc, field, train_x, tcfg.batch_size), got_test, data, tcfg,
                     None if prefix else predicted)
        if not prefix:  # the pretrained encoder's: its test features also draw the embedding map
            test_f = got_test
        result.update({f"{name}/{prefix}{k}": v for k, v in got.items()})
    if len(encoders) > 1:
        raw, raw_train, raw_test = field.baseline(train_x, test_x)
        result.update({f"{name}/{raw}/{k}": v for k, v in scores(raw_train, raw_test, data, tcfg).items()})
    result.update({f"{name}/{k}": v for k, v in trained(encoder, data, tcfg, cfg or Config()).items()})
    return result, pictures(out_dir, encoder, data, tcfg, result, predicted, test_f) if out_dir else []


def timed_evaluate(encoder: torch.nn.Module, tcfg, cfg, out_dir: str) -> tuple[dict[str, float], list[str]]:
    """(evaluate's scores plus `<target>/seconds`, the time they took with the pictures (a sweep budgets for it),
    the paths of the `pictures` written to out_dir): what a run logs."""
    started = time.time()
    scores, made = _evaluate(encoder, tcfg, cfg=cfg, out_dir=out_dir)
    return {**scores, f"{storage.name(_labelled(tcfg.target)[0])}/seconds": time.time() - started}, made


def trained(encoder: torch.nn.Module, data: dict, tcfg, cfg) -> dict[str, float]:
    """The finetune and scratch protocols of tcfg.protocols (finetune.py) on each label fraction, named as in
    `scores`; each prints the hyperparameters its validation slice chose."""
    protocols, fractions = chosen(tcfg)
    if not set(protocols) & set(TRAINED_PROTOCOLS):
        return {}
    from sslscale.evaluation import finetune  # here, not at the top: it imports DeepSpeed (engine.py)

    labels, result = data["train"][1].numpy(), {}
    for text in fractions:
        keep = label_subset(labels, float(text), data["seed"], classes=data["classes"], target=data["name"])
        for protocol in (p for p in protocols if p in TRAINED_PROTOCOLS):
            top1, hp = finetune.top1(encoder if protocol == "finetune" else None, data, keep, cfg, tcfg,
                                     encoder.spec())
            print(f"{data['name']} {score_name(protocol, text)}: {top1:.4f} with {hp}", flush=True)
            result[score_name(protocol, text)] = top1
    return result


SCORE_NAME = re.compile(r"^(?P<target>[^/]+)/(?P<base>random_init/|pixels/)?(?P<protocol>[a-z]+)_top1"
                        r"(?:/frac(?P<fraction>[0-9.e-]+))?$")


def efficiency(scores: dict[str, float]) -> dict[str, dict[float, float]]:
    """The label-efficiency curves in `scores` (evaluate's names): "<base><protocol>" -> {fraction: top-1}, the
    pretrained encoder's protocols and the random-init ones ("random_init/knn"); raw pixels are left out."""
    curves: dict[str, dict[float, float]] = {}
    for key, value in scores.items():
        m = SCORE_NAME.match(key)
        if m and m["base"] != "pixels/":
            curves.setdefault((m["base"] or "") + m["protocol"], {})[float(m["fraction"] or 1)] = value
    return curves


def efficiency_table(scores: dict[str, float]) -> str:
    """The curves as a text table (a row per protocol, a column per fraction) and the headline: what fine-tuning
    the pretrained encoder reaches at the smallest fraction against the from-scratch baseline."""
    curves = efficiency(scores)
    fractions = sorted({f for points in curves.values() for f in points})
    lines = ["protocol".ljust(20) + "".join(f"{f'{f:g} labels':>14}" for f in fractions)]
    lines += [name.ljust(20) + "".join(f"{points[f]:>14.4f}" if f in points else f"{'-':>14}" for f in fractions)
              for name, points in curves.items()]
    tuned, scratch = curves.get("finetune", {}), curves.get("scratch", {})
    shared = sorted(set(tuned) & set(scratch))
    if shared:
        f = shared[0]
        lines.append(f"with {f * 100:g}% of the labels, fine-tuning the pretrained encoder reaches {tuned[f]:.4f} where "
                     f"training from scratch reaches {scratch[f]:.4f} ({tuned[f] - scratch[f]:+.4f})")
    return "\n".join(lines)


def efficiency_plot(scores: dict[str, float], out_png: str) -> str | None:
    """plots.label_efficiency of `scores` when they hold more than one label fraction; None otherwise."""
    curves = efficiency(scores)
    if len({f for points in curves.values() for f in points}) < 2:
        return None
    target = next(m["target"] for k in scores if (m := SCORE_NAME.match(k)))
    return plots.label_efficiency(curves, f"{target}: test accuracy against labels used", out_png)


EMBEDDING_METHODS = {"pca": "PCA", "tsne": "t-SNE"}  # method -> its name on the plot
PICTURES = ("confusion_matrix.png", "embedding_map.png", "label_efficiency.png")  # what `pictures` may write


def _embedding_method(method: str) -> str:
    if method not in EMBEDDING_METHODS:
        raise SslscaleError(f"unknown embedding map method {method!r}; use one of: {', '.join(EMBEDDING_METHODS)}")
    return EMBEDDING_METHODS[method]


def _project(feats: torch.Tensor, method: str, seed: int = 0) -> np.ndarray:
    """Features (n, D) -> 2-D coordinates (n, 2). "pca": the centred features on their two principal directions
    (by SVD, so the first coordinate has the larger variance); "tsne": sklearn's t-SNE, PCA-initialised, seeded."""
    _embedding_method(method)
    x = feats.double().numpy()  # (n, D)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = min(30.0, max(1.0, (len(x) - 1) / 3))  # sklearn needs perplexity < n
        return TSNE(2, init="pca", random_state=seed, perplexity=perplexity).fit_transform(x)
    u, s, _ = np.linalg.svd(x - x.mean(0), full_matrices=False)  # u (n, r), s (r,) in descending order
    out = np.zeros((len(x), 2))
    out[:, :min(2, len(s))] = u[:, :2] * s[:2]  # zero second coordinate when r < 2
    return out


def _map(encoder: torch.nn.Module, field: Modality, images: np.ndarray, labels: np.ndarray, names: list,
         target: str, out_png: str, *, samples: int, seed: int, method: str, feats: torch.Tensor | None = None) -> str:
    """The embedding map of a seeded subsample of `samples` of the test samples of `field` (their features `feats`
    when already computed, else the encoder's), coloured by class."""
    shown = _embedding_method(method)
    if samples < 2:
        raise SslscaleError(f"an embedding map needs samples >= 2, got {samples}")
    keep = np.sort(np.random.default_rng(seed).permutation(len(images))[:samples])
    chosen_f = feats[torch.from_numpy(keep)] if feats is not None else features(encoder, field, images[keep])
    xy = _project(F.normalize(chosen_f, dim=1), method, seed)  # (n, 2)
    title = f"{target} test split: {shown} of {encoder.spec()['name']} embeddings ({len(keep)} images)"
    return plots.class_scatter(xy, np.asarray(labels)[keep], len(names), names, title, shown, out_png)


def embedding_map(encoder: torch.nn.Module, target: str, out_png: str, *, samples: int = 2000, seed: int = 0,
                  method: str = "pca") -> str:
    """A 2-D map (method "pca" or "tsne") of the L2-normalised features of `samples` test images of `target`
    (a seeded random subsample; all of them when fewer), coloured by class, written to `out_png`; returns its path."""
    _embedding_method(method)
    folder, manifest = _labelled(target)
    _, images, labels = corpus.read_split(folder, "test", kind=encoder.modality)
    return _map(encoder, data_field(manifest, folder, encoder.modality), images, labels, label_names(manifest), storage.name(folder),
                out_png, samples=samples, seed=seed, method=method)


def confusion_counts(truth: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """counts[t, p]: how many samples of true class t were predicted as p, (classes, classes) int64."""
    counts = np.zeros((classes, classes), np.int64)
    np.add.at(counts, (truth, predicted), 1)
    return counts


def _confusion(predicted: torch.Tensor, data: dict, key: str, out_png: str) -> str:
    counts = confusion_counts(data["test"][1].numpy(), predicted.numpy(), data["classes"])
    used = key.partition("/frac")[2] or "all"
    title = (f"{data['name']}: linear probe on {used} of the train labels, test split "
             f"(top-1 {np.trace(counts) / counts.sum():.4f})")
    return plots.confusion_matrix(counts, data["names"], title, out_png)


def pictures(out_dir: str, encoder: torch.nn.Module, data: dict, tcfg, result: dict, predicted: dict,
             test_f: torch.Tensor | None) -> list[str]:
    """The scored encoder's pictures in out_dir (names from PICTURES): the confusion matrix of the linear probe
    fit on the largest label fraction (when the linear protocol ran), the 2-D map of tcfg.map_samples test
    embeddings (transfer.embedding_map; `test_f`, the test features, when already computed) and the
    label-efficiency curves (when there is more than one fraction). Returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    made = []
    linear = score_name("linear", max(chosen(tcfg)[1], key=float))  # the probe fit on the most labels
    if linear in predicted:
        made.append(_confusion(predicted[linear], data, linear, os.path.join(out_dir, PICTURES[0])))
    if tcfg.embedding_map != "none":
        test_x, test_y = data["test"]
        made.append(_map(encoder, data["field"], test_x, test_y.numpy(), data["names"], data["name"],
                         os.path.join(out_dir, PICTURES[1]), samples=tcfg.map_samples, seed=data["seed"],
                         method=tcfg.embedding_map, feats=test_f))
    made.append(efficiency_plot(result, os.path.join(out_dir, PICTURES[2])))
    return [path for path in made if path]
