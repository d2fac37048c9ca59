"""What a request carries, to what the model takes: uploads and text fields (``uploads``),
images decoded within limits (``images``), rows (``rows``), a face model's stage
(``faces``), and the reader that chooses among them for a worker (``reader``)."""
