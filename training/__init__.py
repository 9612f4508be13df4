"""Training-side data: the synthetic shapes dataset, users' captioned folders, and the image-analysis evaluator."""
