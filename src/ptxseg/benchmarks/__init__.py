"""Benchmarks on one harness: data layer, backbones, runtimes, training loader, load test."""
