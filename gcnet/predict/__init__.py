"""Prediction with a trained model (tools/predict.py): media.py reads photos, videos and frame folders and aligns
their faces; run.py classifies them (Caffe or onnxruntime, the generated or the person's own reference) into
records; timeline.py plots a video's probabilities over time."""
