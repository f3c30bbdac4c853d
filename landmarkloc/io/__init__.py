"""Reading and writing images, markups, model files and dataset descriptions."""
