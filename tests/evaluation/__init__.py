"""Tests of medseg.evaluation (a package, so its test module names cannot clash with other folders')."""
