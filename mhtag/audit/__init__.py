"""Audits of a labelled image set: data health (`mhtag inspect`)."""
