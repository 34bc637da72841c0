"""mmyolo model configs, shared by training and inference: which config a ``model_name``
is (``zoo``), how a loaded config is edited for a task (``edit``), how a config is kept
from reaching the network (``offline``), and the build-time download of the weights the
image bakes for them (``weights``, the only code that downloads).

Dependencies point one way: protocol <- data <- model_config <- train / infer <- entry.
Nothing here imports training or inference.
"""
