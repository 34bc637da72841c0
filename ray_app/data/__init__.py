"""Datasets: YMIR index and annotations in, COCO json out; and a synthetic sample."""
