"""Tests of the shared package and of the reference docs that describe it."""
