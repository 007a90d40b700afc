"""The index: stored columns and meta, the LanceDB store, FAISS vectors, building, prediction and search."""
