"""``TextFeaturesView``: a text with its tokens shaded by their strongest latent's activation; a click on a token
lists its latents (id, activation, label), and a click on a latent opens its card below. The kernel holds the
analysis and answers "open" with the card's data; the static snapshot is the text and each token's latents."""

from __future__ import annotations

import traitlets

from saekit.widgets._base import SnapshotWidget, esm
from saekit.widgets.feature_html import card_html, text_features_html


class TextFeaturesView(SnapshotWidget):
    """The view of a ``TextFeatures`` (``feats.on_text(lm, text)`` as a cell's last expression)."""

    _esm = esm("card.js", "text_features.js")

    tokens: traitlets.List[dict] = traitlets.List([]).tag(sync=True)  # {text, top: [[latent, value], ...]}
    features = traitlets.Dict({}).tag(sync=True)  # str(latent) -> its overview row (label, top tokens)
    selected = traitlets.Int(-1).tag(sync=True)  # the token whose latents are listed
    card = traitlets.Dict({}).tag(sync=True)

    def __init__(self, found, **kwargs):
        super().__init__(**kwargs)
        self._found = found
        self.tokens = [{"text": t, "top": [[i, v] for i, v in pairs]} for t, pairs in zip(found.tokens, found.top)]
        self.features = {str(r["id"]): r for r in found.overview()}
        strongest = max(range(len(found.top)), key=lambda p: found.top[p][0][1] if found.top[p] else 0.0)
        self.selected = strongest if found.top[strongest] else -1
        self.on_msg(self._request)

    def _request(self, widget, content, buffers) -> None:
        if isinstance(content, dict) and content.get("type") == "open":
            self.show_latent(int(content["id"]))

    def show_latent(self, latent: int) -> None:
        """Open latent ``latent``'s card below the text."""
        self.card = self._found.featureset.feature(latent).to_dict()

    def summary(self) -> str:
        return repr(self._found)

    def snapshot_html(self) -> str:
        return text_features_html(self.tokens, self.features) + (card_html(self.card) if self.card else "")
