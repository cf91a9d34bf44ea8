"""The frozen dual encoder of RADA (METHOD.md section 3): Alpha-CLIP on open_clip, its
weights (registry, download, offline import) and the cached guidance embeddings.

Consumers (training, the pipeline, the networks) only need::

    from rada.guidance import load_embeddings, GuidanceEmbeddings
    emb = load_embeddings(path)          # emb.enabled, emb.text [512], emb.visual[view] [512]
    model.set_guidance(emb.text, emb.visual)  # each view's head gets concat(text, visual[view])

``open_clip`` is imported lazily: loading a cache file needs only numpy and torch.
"""

from rada.guidance.embed import (
                                 DEFAULT_FILENAME,
                                 GuidanceEmbeddings,
                                 compute_embeddings,
                                 embed_dataset,
                                 load_embeddings,
                                 save_embeddings,
)
from rada.guidance.weights import DEFAULT_VARIANT, REGISTRY, VARIANTS, ResolvedWeights, cache_dir, resolve

__all__ = ["DEFAULT_FILENAME", "GuidanceEmbeddings", "compute_embeddings",
           "embed_dataset", "load_embeddings", "save_embeddings", "DEFAULT_VARIANT", "REGISTRY",
           "VARIANTS", "ResolvedWeights", "cache_dir", "resolve"]
