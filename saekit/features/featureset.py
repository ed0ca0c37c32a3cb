"""``FeatureSet`` and ``Feature``: the handle on an analysis folder (``analyses/<job id>/``) that any kernel
can open. A ``FeatureSet`` is a view: the whole analysis, or a selection of its latents (``top``, ``dead``,
``dense``, ``search`` and slices return views), indexed by position; ``Feature`` is one latent with its
statistics, contexts, quantile samples, logit lens and neighbours.

The per-latent table is read once (a few MB for 65k latents); examples are read per feature from the
Parquet row groups that hold them, so opening a card reads kilobytes whatever the analysis' size.
"""

from __future__ import annotations

import json
import math
import re
import threading
from dataclasses import dataclass, field
from functools import cached_property
from importlib import import_module
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from saekit._fs import is_url, read_file
from saekit._provided import provided
from saekit._table import ObjectTable
from saekit.features import labels
from saekit.errors import ConfigError, DataError
from saekit.features.tables import EXAMPLES_GROUP, SEARCH_SEPARATOR, open_checked, read_checked, reading
from saekit.workspace import Workspace, as_workspace

SORT_KEYS = ("frequency", "max", "mean", "count")
OVERVIEW = ("latent", "count", "frequency", "mean", "max", "top_tokens", "logit_top")


@dataclass
class Example:
    """One context: the window of tokens around the activating one, and the latent's activation on each."""

    value: float  # the activation at the activating token
    row: int  # the source row (of the activation store, or of the stream over the token store)
    tokens: list[str]
    token_ids: list[int]
    values: list[float]
    center: int  # where in the window the activating token is
    quantile: int = -1  # the quantile bin it was drawn from (-1: a top-k example)

    def text(self, mark: bool = True) -> str:
        """The window's text, the activating token in «» when ``mark``."""
        return "".join(f"«{t}»" if mark and i == self.center else t for i, t in enumerate(self.tokens))

    def __repr__(self) -> str:
        return f"Example({self.value:.3g}: {self.text()!r})"


@dataclass
class Quantile:
    """One equal-count bin of the latent's nonzero activations (``low`` to ``high``) and contexts drawn from it."""

    index: int
    low: float
    high: float
    examples: list[Example] = field(default_factory=list)


@dataclass
class Feature:
    """One latent of an analysis: statistics, contexts, quantile samples, logit lens, neighbours."""

    id: int
    count: int  # tokens it fired on
    frequency: float  # count / tokens analysed (its density)
    log10_frequency: float
    mean: float  # mean nonzero activation
    max: float
    histogram: dict  # {"edges": [...], "counts": [...]} of its nonzero activations (log-spaced bins)
    top_tokens: list[tuple[str, int]]  # the tokens most often at the activation of its top contexts, and how often
    examples: list[Example]  # its top-k contexts, highest first
    quantiles: list[Quantile]
    logits: dict | None  # {"top": [(token, value)], "bottom": [...]} through the unembedding, or None
    neighbours: list[tuple[int, float]]  # nearest latents by decoder cosine
    cooccurring: list[tuple[int, float]]  # latents that fire with it, and the share of its firings they shared
    analysis: str = ""  # the analysis (job id)
    label: str | None = None  # the label shown: the user's, else an LLM's, else the automatic one
    label_source: str = "auto"  # "user", "llm" or "auto"
    auto_label: str = ""  # from its top tokens and logit lens
    featureset: "FeatureSet | None" = field(default=None, repr=False, compare=False)  # the analysis it belongs to
    matches: list[tuple[str, int, float]] = field(default_factory=list)  # (analysis, latent, cosine) once matched

    @property
    def dead(self) -> bool:
        return self.count == 0

    def to_dict(self) -> dict:
        """Everything, as plain JSON-able data (what the card widget draws)."""
        def example(e: Example) -> dict:
            return {"value": e.value, "row": e.row, "tokens": e.tokens, "values": e.values, "center": e.center}

        return {
            "id": self.id, "analysis": self.analysis, "label": self.label, "label_source": self.label_source,
            "auto_label": self.auto_label, "count": self.count,
            "frequency": self.frequency, "log10_frequency": _finite(self.log10_frequency), "mean": self.mean,
            "max": self.max, "histogram": {"edges": [_finite(e) for e in self.histogram["edges"]],
                                           "counts": self.histogram["counts"]},
            "top_tokens": [list(t) for t in self.top_tokens], "examples": [example(e) for e in self.examples],
            "quantiles": [{"index": q.index, "low": _finite(q.low), "high": _finite(q.high),
                           "examples": [example(e) for e in q.examples]} for q in self.quantiles],
            "logits": None if self.logits is None else {k: [list(t) for t in v] for k, v in self.logits.items()},
            "neighbours": [list(n) for n in self.neighbours], "cooccurring": [list(c) for c in self.cooccurring],
            "matches": [list(m) for m in self.matches],
        }

    def label_history(self):
        """Every label this feature was given (user and LLM), oldest first: label, source, author, note, time."""
        if self.featureset is None:
            raise ConfigError("this Feature is not attached to its analysis")
        return self.featureset.label_history(self.id)

    def steer(self, lm, coeff: float, *, mode: str = "add", positions: str = "all", relative: bool = False, sae=None):
        """``sk.steer(lm, sae, {this feature: coeff}, ...)`` with the analysed SAE (loaded from its files unless
        ``sae`` is given); ``relative=True`` makes ``coeff`` a multiple of this feature's max activation."""
        if self.featureset is None and (relative or sae is None):
            raise ConfigError("this Feature is not attached to its analysis; use sk.steer(lm, sae, {id: coeff})")
        if sae is None:
            assert self.featureset is not None  # checked above
            sae = self.featureset.sae(device=str(lm.device))
        return provided("steer")(lm, sae, {self.id: coeff}, mode=mode, positions=positions,
                              hook_point=self.featureset.meta["hook_point"] if self.featureset else None,
                              relative_to=self.featureset if relative else None)

    def card(self):
        """The feature card widget (Jupyter)."""
        return provided("feature card")(self, self.featureset)

    def _repr_mimebundle_(self, include=None, exclude=None):
        return self.card()._repr_mimebundle_(include=include, exclude=exclude)

    def __repr__(self) -> str:
        tokens = ", ".join(repr(t) for t, _ in self.top_tokens[:5])
        return (f"Feature {self.id}: fires on {self.frequency:.3%} of tokens (mean {self.mean:.3g}, max {self.max:.3g}); "
                f"top tokens {tokens or '-'}")


def _finite(x):
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def analyses_folder(ws: Workspace, job_id: str) -> Path:
    """The analysis' folder in the workspace: its tables, or (when they are under a ``root`` URL) its labels journal."""
    return ws.path / "analyses" / job_id


def tables_location(ws: Workspace, job_id: str, root: str | None) -> str:
    """Where the analysis' tables are: ``<root>/<job id>`` when it was given a root, else its workspace folder."""
    return f"{root}/{job_id}" if root else str(analyses_folder(ws, job_id))


class FeatureSet:
    """The features of one analysis (or a selection of them): ``len``, ``feats[i]`` (a ``Feature``; a slice is
    a selection), iteration, ``top``, ``dead``, ``dense``, ``search``, ``to_pandas``; the feature browser in
    a notebook. Open one with ``sk.job(id).result()``, ``sk.analyses()[i]`` or ``sk.FeatureSet(folder)``."""

    def __init__(self, folder: str | Path, *, workspace: Workspace | str | None = None, _parent: "FeatureSet" | None = None,
                 _ids: np.ndarray | None = None, _title: str = ""):
        self.folder = str(folder).rstrip("/") if is_url(folder) else Path(folder)  # a folder, or a URL (root=)
        self.workspace = as_workspace(workspace)
        if _parent is not None:
            self._shared: _Files = _parent._shared
        else:
            meta = read_file(self.folder, "meta.json")
            if meta is None:
                raise DataError(f"{str(self.folder)!r} is not a feature analysis (no meta.json)",
                                suggestion="open one with sk.analyses() or sk.job(id).result()")
            self._shared = _Files(self.folder, json.loads(meta))
        self.ids = np.arange(self.n_latents, dtype=np.int64) if _ids is None else np.asarray(_ids, dtype=np.int64)
        self.title = _title

    # -- what it is ------------------------------------------------------------------------------------
    @property
    def meta(self) -> dict:
        return self._shared.meta

    @property
    def id(self) -> str:
        """The analysis' job id."""
        return self.meta["job_id"]

    @property
    def journal_folder(self) -> Path:
        """Where its label changes are journalled: ``analyses/<id>/`` of the workspace this FeatureSet was opened
        in (whose registry holds the labels), never a path a result names: a copied workspace writes its own."""
        if self.folder != analyses_folder(self.workspace, self.id) and read_file(self.folder, "meta.json") is None:
            raise DataError(f"analysis {self.id} was deleted ({str(self.folder)!r} holds no tables): its labels "
                            "cannot change", suggestion="label the latents of an analysis that exists (sk.analyses())")
        folder = analyses_folder(self.workspace, self.id)
        if not folder.is_dir():
            if self.folder == folder:
                raise DataError(f"analysis {self.id} was deleted ({str(folder)!r} is gone): its labels cannot change",
                                suggestion="label the latents of an analysis that exists (sk.analyses())")
            folder.mkdir(parents=True, exist_ok=True)
        return folder

    @property
    def n_latents(self) -> int:
        return self.meta["summary"]["n_latents"]

    @property
    def n_tokens(self) -> int:
        return self.meta["summary"]["n_tokens"]

    def column(self, name: str) -> np.ndarray:
        """One per-latent column (``count``, ``frequency``, ``mean``, ``max``, ...) for the latents of this view."""
        table = self._shared.latents
        if name not in table.column_names:
            raise ConfigError(f"no column {name!r}; the columns are {table.column_names}")
        return table.column(name).to_numpy(zero_copy_only=False)[self.ids]

    # -- a sequence of features ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self._view(self.ids[index], self.title)
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"features are indexed by position (an int) or a slice, not {type(index).__name__}")
        if not -len(self) <= index < len(self):
            raise IndexError(f"feature {index} out of range: this view has {len(self)} of {self.n_latents} latents")
        return self.feature(int(self.ids[index]))

    def __iter__(self):
        return (self.feature(int(i)) for i in self.ids)

    def feature(self, latent: int) -> Feature:
        """The feature of latent ``latent`` (its id in the SAE, whatever this view holds)."""
        return self.features([latent])[0]

    def features(self, latents) -> list[Feature]:
        """The features of several latents (ids in the SAE), their labels read in one query."""
        latents = list(latents)
        for latent in latents:
            if isinstance(latent, bool) or not isinstance(latent, (int, np.integer)) or not 0 <= latent < self.n_latents:
                raise IndexError(f"latent {latent!r} out of range: the SAE has {self.n_latents} latents "
                                 f"(0..{self.n_latents - 1})")
        latents = [int(i) for i in latents]
        shown_labels = labels.shown(self.workspace, self.id) if latents else {}
        out = []
        for latent in latents:
            feature = self._shared.feature(latent, self.id)
            shown = shown_labels.get(latent)
            feature.label, feature.label_source = shown if shown else (feature.auto_label or None, "auto")
            feature.featureset = self
            feature.matches = [(other, int(ids[latent]), float(cos[latent]))
                               for other, (ids, cos) in MATCHES.get(self.id, {}).items()]
            out.append(feature)
        return out

    # -- selections ------------------------------------------------------------------------------------------
    def _view(self, ids: np.ndarray, title: str) -> "FeatureSet":
        return FeatureSet(self.folder, workspace=self.workspace, _parent=self, _ids=ids, _title=title)

    def sort(self, by: str = "frequency") -> "FeatureSet":
        """This view's latents ordered by ``by``: highest first for ``frequency``, ``max``, ``mean`` or ``count``
        (ties by id), ascending for ``id``."""
        if by == "id":
            return self._view(np.sort(self.ids), self.title)
        if by not in SORT_KEYS:
            raise ConfigError(f"by={by!r}: sort by one of {SORT_KEYS + ('id',)}")
        order = np.lexsort((self.ids, -self.column(by)))
        return self._view(self.ids[order], f"{self.title + ', ' if self.title else ''}by {by}")

    def select(self, latents) -> "FeatureSet":
        """A view of the given latent ids, in that order."""
        ids = np.asarray(list(latents), dtype=np.int64)
        bad = ids[(ids < 0) | (ids >= self.n_latents)]
        if bad.size:
            raise IndexError(f"latent(s) {bad.tolist()} out of range: the SAE has {self.n_latents} latents")
        return self._view(ids, "selection")

    def sae(self, device: str | None = None):
        """The analysed SAE, loaded from its files."""
        from saekit.sae.model import SAE

        return SAE.load(self.meta["sae"]["path"], device=device)

    def top(self, n: int = 20, by: str = "frequency") -> "FeatureSet":
        """The ``n`` latents with the highest ``by`` (``frequency``, ``max``, ``mean`` or ``count``)."""
        if by not in SORT_KEYS:
            raise ConfigError(f"by={by!r}: sort by one of {SORT_KEYS}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ConfigError(f"n={n!r} must be a number of features >= 0")
        return self._view(self.sort(by).ids[:n], f"top {n} by {by}")

    def dead(self) -> "FeatureSet":
        """The latents that never fired on the analysed tokens."""
        return self._view(self.ids[self.column("count") == 0], "dead")

    def dense(self, threshold: float = 0.1) -> "FeatureSet":
        """The latents that fire on more than ``threshold`` of tokens (e.g. 0.1: one token in ten)."""
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0 <= threshold <= 1:
            raise ConfigError(f"threshold={threshold!r} must be a fraction of tokens between 0 and 1")
        return self._view(self.ids[self.column("frequency") > threshold], f"denser than {threshold:g}")

    def search(self, query: str) -> "FeatureSet":
        """The latents whose top tokens, logit-lens tokens or label contain ``query`` (case-insensitive), best
        first: a latent whose first top token is the query (leading space aside), then those with the query as
        a whole token, then by how many tokens contain it (a label counts twice), then the most frequent. A
        query that is a latent id (``"99"``) puts that latent first."""
        if not isinstance(query, str) or not query.strip():
            raise ConfigError(f"query={query!r}: search for some text, e.g. feats.search('python')")
        needle = query.lower()
        text = self._shared.search_text
        sep = SEARCH_SEPARATOR

        def count(pattern: str) -> np.ndarray:
            return pc.count_substring(text, pattern).to_numpy(zero_copy_only=False).astype(np.int64)  # writable

        whole = [sep + needle + sep] + ([sep + " " + needle + sep] if not needle.startswith(" ") else [])
        first = sum(pc.starts_with(text, w).to_numpy(zero_copy_only=False).astype(np.int64) for w in whole)
        score = 1000 * first + 100 * sum(count(w) for w in whole) + count(needle)
        for latent, label in self._labels().items():
            score[latent] += 100 * (label.lower() == needle.strip()) + 2 * label.lower().count(needle)
        if re.fullmatch(r"[0-9]+", needle.strip()) and int(needle) < self.n_latents:
            score[int(needle)] += 10**9  # go to a latent by its id
        score = score[self.ids]
        found = score > 0
        ids, score = self.ids[found], score[found]
        frequency = self._shared.latents.column("frequency").to_numpy()[ids]
        order = np.lexsort((ids, -frequency, -score))
        return self._view(ids[order], f"search {query!r}")

    def _labels(self) -> dict[int, str]:
        """The user or LLM label shown for each labelled latent (from the registry)."""
        return {i: label for i, (label, _) in labels.shown(self.workspace, self.id).items()}

    # -- labels ------------------------------------------------------------------------------------------------
    def label(self, latent: int, text: str, *, note: str | None = None) -> None:
        """Give latent ``latent`` a user label (kept beside the automatic and LLM ones, shown first; every change
        is kept: ``label_history``)."""
        self.set_labels({latent: text}, note=note)

    def set_labels(self, texts: dict[int, str], *, note: str | None = None, source: str = "user",
                   provenance: dict | None = None, scores: dict | None = None) -> int:
        """Label many latents in one transaction (``{latent: text}``); returns how many rows were written."""
        if source not in labels.SOURCES:
            raise ConfigError(f"source={source!r} is not one of {labels.SOURCES} (automatic labels are not written)")
        checked = {labels.check_feature(i, self.n_latents): labels.check_label(t) for i, t in texts.items()}
        rows = [labels.make_row(self.id, i, t, source, note=note, provenance=provenance, scores=scores)
                for i, t in checked.items()]
        return labels.write(self.workspace, self.journal_folder, rows)

    def clear_label(self, latent: int, *, source: str = "user") -> None:
        """Remove latent ``latent``'s current label of ``source`` (the history keeps it)."""
        if source not in labels.SOURCES:
            raise ConfigError(f"source={source!r} is not one of {labels.SOURCES}")
        latent = labels.check_feature(latent, self.n_latents)
        labels.write(self.workspace, self.journal_folder, [labels.make_row(self.id, latent, "", source)])

    def labels(self):
        """A DataFrame indexed by latent, one row per latent of this view: the label shown and its source, and
        the user, LLM and automatic labels side by side."""
        import pandas as pd

        current = {(r["feature"], r["source"]): r for r in labels.current_labels(self.workspace, self.id)}
        rows = []
        for i in self.ids.tolist():
            user, llm = current.get((i, "user")), current.get((i, "llm"))
            top = user or llm
            rows.append({"latent": i, "label": top["label"] if top else self._shared.auto_labels[i],
                         "source": top["source"] if top else "auto", "user": user and user["label"],
                         "llm": llm and llm["label"], "auto": self._shared.auto_labels[i],
                         "author": top["author"] if top else None, "updated_at": top["created_at"] if top else None})
        return pd.DataFrame(rows).set_index("latent")

    def label_history(self, latent: int | None = None):
        """Every label change of one latent (or of the whole analysis), oldest first."""
        if latent is not None:
            latent = labels.check_feature(latent, self.n_latents)
        return labels.history(self.workspace, self.id, latent)

    def export_labels(self, path: str | Path) -> Path:
        """Every user and LLM label row (the history included) to a ``.json`` or ``.csv`` file, with the SAE's
        fingerprint (CSV cells that a spreadsheet would run as formulas are escaped with a leading ``'``)."""
        return labels.export(self.workspace, self.id, path, sae=self._sae_identity())

    def _sae_identity(self) -> str | None:
        """What says which SAE the labels are of: a hash of its weights (``sha256:...``), or for analyses written
        before it was kept, the SAE's fingerprint."""
        sae = self.meta["sae"]
        return f"sha256:{sae['digest']}" if sae.get("digest") else sae.get("fingerprint")

    def import_labels(self, path: str | Path, *, force: bool = False) -> int:
        """Bring in the rows of an ``export_labels`` file (from any workspace, same SAE), all or none; rows
        already here are skipped. A file of another SAE's labels is refused unless ``force=True``. Returns how
        many were added."""
        rows = labels.read_import(path, self.id, self.n_latents, sae=self._sae_identity(), force=force)
        return labels.write(self.workspace, self.journal_folder, rows)

    # -- tables ------------------------------------------------------------------------------------------------
    def to_pandas(self, columns: tuple[str, ...] | None = None):
        """One row per latent of this view: id, count, frequency, mean, max, top tokens, logit tokens."""
        table = self._shared.latents
        names = [c for c in (columns or OVERVIEW) if c in table.column_names]
        frame = table.select(names).take(pa.array(self.ids)).to_pandas()
        given = self._labels()
        frame["label"] = [given.get(int(i)) or self._shared.auto_labels[int(i)] for i in self.ids]
        return frame.set_index("latent")

    def overview(self, limit: int = 200) -> list[dict]:
        """The first ``limit`` latents of this view as small rows (what the browser lists)."""
        table = self._shared.latents
        ids = self.ids[:limit]
        cols = {c: table.column(c).to_numpy(zero_copy_only=False)[ids] for c in ("count", "frequency", "mean", "max")}
        tops = table.column("top_tokens").take(pa.array(ids)).to_pylist()
        given = self._labels()
        return [{"id": int(i), "count": int(cols["count"][j]), "frequency": float(cols["frequency"][j]),
                 "mean": float(cols["mean"][j]), "max": float(cols["max"][j]), "top_tokens": tops[j][:5],
                 "label": given.get(int(i)) or self._shared.auto_labels[int(i)]} for j, i in enumerate(ids)]

    def match(self, other: "FeatureSet"):
        """Match this analysis' latents with ``other``'s (another SAE of the same model and hook point) by decoder
        cosine, both ways: a ``FeatureMatch`` (``.to_pandas()``: each latent's match, cosine, and whether it is
        mutual). From then on, in this process, the cards of either analysis (however opened) show the match in
        the other; a new process matches again (it is not saved)."""
        from saekit.features.matching import match

        found = match(self, other)
        MATCHES.setdefault(self.id, {})[other.id] = found.a_to_b
        MATCHES.setdefault(other.id, {})[self.id] = found.b_to_a
        return found

    def on_text(self, lm, text: str, *, n: int = 5, sae=None):
        """Which features fire on ``text``: per token the ``n`` strongest latents of the analysed SAE, read at the
        analysed hook point of ``lm`` (the model the analysis was made from). In a notebook, a view of the
        text whose tokens list their features, each opening its card; ``.to_pandas()`` gives the table."""
        from saekit.features.on_text import features_on_text

        return features_on_text(self, lm, text, n=n, sae=sae)

    # -- display and export -------------------------------------------------------------------------------------
    def browse(self):
        """The feature browser widget (Jupyter): search, sort, click or arrow keys to open a card."""
        return provided("feature browser")(self)

    def _repr_mimebundle_(self, include=None, exclude=None):
        return self.browse()._repr_mimebundle_(include=include, exclude=exclude)

    def export_html(self, path: str | Path, features=None) -> Path:
        """A self-contained HTML file of ``features`` (ids, or this view's first 50) to share without a kernel."""
        return provided("features html")(self, path, features)

    def to_neuronpedia(self, path: str | Path, features=None, *, model_id: str = "", sae_id: str = "") -> Path:
        """The features as JSON in the layout of Neuronpedia's feature uploads (activations with tokens and
        values, logit lens, frequency), one object per feature in a list."""
        return import_module("saekit.features.export").to_neuronpedia(self, path, features, model_id=model_id,
                                                                       sae_id=sae_id)

    def __repr__(self) -> str:
        what = f" ({self.title})" if self.title else ""
        return (f"FeatureSet {self.id}: {len(self):,} of {self.n_latents:,} latents{what}, analysed on "
                f"{self.n_tokens:,} tokens ({self.meta['summary']['alive']:,} alive)")


class _Files:
    """The files of one analysis, opened once and shared by its views."""

    def __init__(self, folder: Path | str, meta: dict):
        self.folder, self.meta = folder, meta
        self.latents = read_checked(folder, "latents.parquet", meta)
        self._read_lock = threading.Lock()  # a ParquetFile is not safe to read from two threads at once

    @cached_property
    def auto_labels(self) -> list[str]:
        logit = self.latents.column("logit_top").to_pylist() if "logit_top" in self.latents.column_names else None
        tops = self.latents.column("top_tokens").to_pylist()
        return [labels.auto_label(t, logit[i] if logit else None) for i, t in enumerate(tops)]

    @cached_property
    def search_text(self) -> pa.Array:
        return self.latents.column("search_text").combine_chunks()

    @cached_property
    def vocab(self) -> list[str]:
        return read_checked(self.folder, "vocab.parquet", self.meta).column("token").to_pylist()

    @cached_property
    def examples_file(self) -> pq.ParquetFile:
        return open_checked(self.folder, "examples.parquet", self.meta)  # read a row group at a time, kept open

    @cached_property
    def example_starts(self) -> np.ndarray:
        """Where each latent's examples start in examples.parquet (they are sorted by latent)."""
        with self._read_lock, reading(self.folder, "examples.parquet"):
            latents = self.examples_file.read(columns=["latent"]).column("latent").to_numpy()
        if len(latents) and np.any(np.diff(latents) < 0):
            raise DataError(f"the analysis table examples.parquet in {str(self.folder)!r} is damaged (its rows are "
                            "not sorted by latent)", suggestion="run the analysis again: sk.analyze(..., force=True)")
        return np.searchsorted(latents, np.arange(len(self.latents) + 1), side="left")

    def examples(self, latent: int) -> pa.Table:
        lo, hi = int(self.example_starts[latent]), int(self.example_starts[latent + 1])
        if hi == lo:
            return self.examples_file.schema_arrow.empty_table()
        first, last = lo // EXAMPLES_GROUP, (hi - 1) // EXAMPLES_GROUP
        with self._read_lock, reading(self.folder, "examples.parquet"):
            groups = self.examples_file.read_row_groups(list(range(first, last + 1)))
        return groups.slice(lo - first * EXAMPLES_GROUP, hi - lo)

    def feature(self, latent: int, analysis: str) -> Feature:
        row = self.latents.slice(latent, 1).to_pylist()[0]
        vocab = self.vocab
        edges = [e if e is not None else math.inf for e in self.meta["hist_edges"]]
        examples: list[Example] = []
        quantiles: dict[int, list[Example]] = {}
        q_edges = row["quantile_edges"]
        table = self.examples(latent)  # read once (its row groups), not once a column
        for quantile, value, source_row, tokens, values, center in zip(*(table.column(c).to_pylist() for c in (
                "quantile", "value", "row", "tokens", "values", "center"))):
            ex = Example(value=value, row=source_row, tokens=[vocab[t] if t >= 0 else "" for t in tokens],
                         token_ids=tokens, values=values, center=center, quantile=quantile)
            if quantile < 0:
                examples.append(ex)
            else:
                quantiles.setdefault(quantile, []).append(ex)
        logits = None
        if "logit_top" in row:
            logits = {side: list(zip(row[f"logit_{side}"], row[f"logit_{side}_values"])) for side in ("top", "bottom")}
        return Feature(
            id=latent, count=row["count"], frequency=row["frequency"], log10_frequency=row["log10_frequency"],
            mean=row["mean"], max=row["max"], histogram={"edges": edges, "counts": row["histogram"]},
            top_tokens=list(zip(row["top_tokens"], row["top_token_counts"])), examples=examples,
            quantiles=[Quantile(q, q_edges[q], q_edges[q + 1], quantiles.get(q, []))
                       for q in range(len(q_edges) - 1) if q_edges[q] is not None and not math.isnan(q_edges[q])],
            logits=logits, neighbours=list(zip(row.get("neighbour_ids") or [], row.get("neighbour_cosines") or [])),
            cooccurring=list(zip(row.get("cooccurring_ids") or [], row.get("cooccurring_shares") or [])),
            analysis=analysis, auto_label=self.auto_labels[latent])


MATCHES: dict[str, dict[str, tuple]] = {}  # analysis id -> {another analysis' id: (ids, cosines)}: FeatureSet.match

ANALYSIS_COLUMNS = ("id", "status", "sae", "source", "n_latents", "n_tokens", "alive", "created_at")


def analyses(workspace: Workspace | str | None = None) -> ObjectTable:
    """Every feature analysis of the workspace (analyze jobs, any state); items open as ``FeatureSet``."""
    from saekit import registry

    ws = as_workspace(workspace)
    rows = []
    for job in registry.list_jobs(ws, kind="analyze", with_spec=True):
        spec = job.spec_dict
        folder = tables_location(ws, job.id, spec.get("root"))
        meta = read_file(folder, "meta.json") if job.status == "completed" or not spec.get("root") else None
        summary = json.loads(meta)["summary"] if meta is not None else {}
        source = spec.get("source", {})
        rows.append({"id": job.id, "status": str(job.status), "sae": spec.get("sae", {}).get("path"),
                     "source": (source.get("store") or {}).get("id") or (spec.get("tokens") or {}).get("id"),
                     "n_latents": summary.get("n_latents"), "n_tokens": summary.get("n_tokens"),
                     "alive": summary.get("alive"), "created_at": job.created_at, "folder": str(folder)})

    def open_row(row: dict) -> FeatureSet:
        if row["status"] != "completed":
            raise DataError(f"analysis {row['id']} is {row['status']}: it has no features yet",
                            suggestion=f"sk.job({row['id']!r}).wait(), or .resume() it")
        return FeatureSet(row["folder"], workspace=ws)

    return ObjectTable(rows, ANALYSIS_COLUMNS, open=open_row,
                       empty=f"no analyses in {str(ws.path)!r}; make one with sk.analyze(sae, store)")

