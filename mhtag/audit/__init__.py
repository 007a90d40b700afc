"""Audits of a labelled image set: data health (`mhtag inspect`); wrong labels, duplicates and split leaks
(`mhtag audit`)."""
