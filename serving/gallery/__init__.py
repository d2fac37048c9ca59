"""The gallery of enrolled identities: the database table that is its truth (``table``),
each worker's faiss index of it (``index``), the two kept in step (``store``), and identity
names as stored (``names``)."""
