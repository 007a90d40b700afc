"""Audits of a labelled image set: data health (`mhtag inspect`) and label noise, duplicates, leaks (`mhtag audit`)."""
