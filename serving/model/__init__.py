"""The served model: one registered version loaded once per worker (``served``), its
runtime (``runtimes``: ONNX Runtime or PyTorch), adaptive batching (``batcher``), GradCAM
(``gradcam``), and the version packed into a Bento (``packaging``). The version's files
arrive as a bundle (``zoo.export.bundle``), fetched by ``mlflow_source`` or packed."""
