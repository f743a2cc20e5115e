"""Batch jobs over the Parquet lake (compaction, rollups, retention, erasure, reprice).

Each job is safe to interrupt at any point and to run twice; they arrive with the lake.
"""
