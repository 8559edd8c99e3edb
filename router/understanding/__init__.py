"""Query understanding: signals from the query text (an edge).

Text → per-skill text relevance, ranked domains, complexity estimate →
``router.core.signals`` decides. Two encoders behind the
``router.runtime.ports.Understanding`` port, chosen in config
(``understanding.encoder``): ``local`` (TF-IDF + linear SVM, scikit-learn,
no network) and ``embeddings`` (an OpenAI-compatible ``/v1/embeddings``
endpoint through the ``Embedder`` port).
"""

from router.understanding._complexity import complexity_features, estimate_complexity
from router.understanding._embeddings import EmbeddingsEncoder, FittedEmbeddings, VectorCache
from router.understanding._local import FittedLocal, LocalEncoder
from router.understanding._understanding import TextUnderstanding

__all__ = [
    "EmbeddingsEncoder",
    "FittedEmbeddings",
    "FittedLocal",
    "LocalEncoder",
    "TextUnderstanding",
    "VectorCache",
    "complexity_features",
    "estimate_complexity",
]
