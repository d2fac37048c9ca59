"""Names of what an export writes to a run and its registered version.

Their own module, free of heavy imports, because the server reads them too: it fetches a
version's ``export/`` files and checks its ``zoo.exported`` tag without importing the
exporter (which pulls in timm, torchvision and onnx: seconds of every worker's start).
"""
ARTIFACT_DIR = "export"
GALLERY_DIR = "gallery"
#: the state dict (safetensors) and recipe a server rebuilds the eager module from (GradCAM)
WEIGHTS_DIR = "weights"
ONNX_MODEL_NAME = "onnx"
METRIC_PREFIX = "export_"
EXPORTED_TAG = "zoo.exported"
ERROR_TAG = "zoo.export_error"
