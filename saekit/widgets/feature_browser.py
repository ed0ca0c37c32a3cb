"""``FeatureBrowser``: a ``FeatureSet`` to browse: a search box (over top tokens, logit-lens tokens and
labels), a list sortable by frequency, max or mean, and the card of the selected feature. The kernel
searches and sorts (``FeatureSet.search``/``top``) and fills the traits; the browser draws them."""

from __future__ import annotations

import traitlets

from saekit.widgets._base import SnapshotWidget, esm
from saekit.widgets.feature_html import card_html, overview_html

LIST_ROWS = 200  # rows sent to the list at first; "show more" sends as many again


class FeatureBrowser(SnapshotWidget):
    """Browse a ``FeatureSet`` (``feats.browse()``, or a ``FeatureSet`` as a cell's last expression)."""

    _esm = esm("card.js", "feature_browser.js")

    title = traitlets.Unicode("").tag(sync=True)
    query = traitlets.Unicode("").tag(sync=True)
    sort = traitlets.Unicode("frequency").tag(sync=True)
    rows: traitlets.List[dict] = traitlets.List([]).tag(sync=True)
    matches = traitlets.Int(0).tag(sync=True)
    limit = traitlets.Int(LIST_ROWS).tag(sync=True)  # rows in the list (the browser's "show more" raises it)
    total = traitlets.Int(0).tag(sync=True)
    selected = traitlets.Int(-1).tag(sync=True)
    card = traitlets.Dict({}).tag(sync=True)

    def __init__(self, featureset, **kwargs):
        super().__init__(**kwargs)
        self._feats = featureset
        self.title = f"analysis {featureset.id}" + (f" ({featureset.title})" if featureset.title else "")
        self.total = len(featureset)
        self.observe(self._searched, names=["query"])
        self.observe(lambda change: self._refresh(), names=["sort", "limit"])
        self.observe(lambda change: self._show(change["new"]), names=["selected"])
        self._refresh()

    def _searched(self, change) -> None:
        """A new search lists its best matches first (by relevance until another sort is picked); clearing it
        goes back to the most frequent first."""
        self.limit = LIST_ROWS
        wanted = "relevance" if change["new"].strip() else ("frequency" if self.sort == "relevance" else self.sort)
        if wanted != self.sort:
            self.sort = wanted  # refreshes
        else:
            self._refresh()

    def _view(self):
        feats = self._feats.search(self.query) if self.query.strip() else self._feats
        return feats.sort(self.sort) if self.sort != "relevance" else feats

    def _refresh(self) -> None:
        view = self._view()
        self.matches = len(view)
        self.rows = view.overview(self.limit)
        if self.rows and self.selected not in {r["id"] for r in self.rows}:
            self.selected = self.rows[0]["id"]
        elif not self.rows:
            self.card = {}

    def _show(self, latent: int) -> None:
        self.card = self._feats.feature(latent).to_dict() if latent >= 0 else {}

    def summary(self) -> str:
        lines = [f"{self.title}: {self.matches:,} of {self.total:,} features"]
        lines += [f"  #{r['id']}: {100 * r['frequency']:.3g}%, max {r['max']:.3g}, top tokens {r['top_tokens']}"
                  for r in self.rows[:10]]
        return "\n".join(lines)

    def snapshot_html(self) -> str:
        return overview_html(self.rows[:50], self.title, self.matches, self.total) + (card_html(self.card) if self.card else "")
