"""Helpers that the tests of several layers share (imported as ``helpers.<module>``)."""
