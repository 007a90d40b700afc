"""Data: image decoding, the label schema, the labels CSV, transforms, datasets and synthetic demo data."""
