"""Inference and mining: Ray Data streams the candidates to a pool of model actors."""

import time

#: when this process began to load the inference modules: in a model actor's process that is
#: the first thing it does for the actor, so its ready line counts its imports (torch,
#: mmengine and these modules) from here
LOADING_SINCE = time.monotonic()
