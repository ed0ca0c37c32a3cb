"""Corpora and their tokenization into token stores."""

from saekit.data.corpus import Corpus, load_corpus
from saekit.data.tokenization import tokenize
from saekit.data.tokens import TokenStore, token_stores

__all__ = ["Corpus", "TokenStore", "load_corpus", "token_stores", "tokenize"]
