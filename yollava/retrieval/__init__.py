"""Hard-negative retrieval: CLIP embeddings, on-disk indexes, clip-retrieval services."""
