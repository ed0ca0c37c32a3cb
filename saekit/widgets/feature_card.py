"""``FeatureCard``: one feature's card (statistics, activation histogram, top contexts and quantile samples
with per-token highlighting and the value on hover, logit lens, neighbours). Its whole state is the
``feature`` trait (``Feature.to_dict()``); with a ``FeatureSet`` behind it, clicking a neighbour opens that
feature in the same card."""

from __future__ import annotations

import traitlets

from saekit.widgets._base import SnapshotWidget, esm
from saekit.widgets.feature_html import card_html


class FeatureCard(SnapshotWidget):
    """The card of one ``Feature`` (``feature.card()``, or a ``Feature`` as a cell's last expression)."""

    _esm = esm("card.js", "feature_card.js")

    feature = traitlets.Dict({}).tag(sync=True)
    can_open = traitlets.Bool(False).tag(sync=True)

    def __init__(self, feature, featureset=None, **kwargs):
        super().__init__(**kwargs)
        self._featureset = featureset
        self.can_open = featureset is not None
        self.feature = feature.to_dict()
        self.on_msg(self._request)

    def _request(self, widget, content, buffers) -> None:
        if isinstance(content, dict) and content.get("type") == "open" and self._featureset is not None:
            self.show_latent(int(content["id"]))

    def show_latent(self, latent: int) -> None:
        """Show latent ``latent`` of the card's feature set."""
        self.feature = self._featureset.feature(latent).to_dict()

    def summary(self) -> str:
        f = self.feature
        tokens = ", ".join(repr(t) for t, _ in f["top_tokens"][:5]) or "-"
        return (f"Feature {f['id']}: fires on {100 * f['frequency']:.4g}% of tokens, mean {f['mean']:.3g}, "
                f"max {f['max']:.3g}; top tokens {tokens}")

    def snapshot_html(self) -> str:
        return card_html(self.feature)
