"""``python -m ray_app``: the command the image's /usr/bin/start.sh runs.

The process ends with its task: a local Ray it started is ended with it, without Ray's
graceful shutdown (see ``ray_session.end_process``)."""

from ray_app.cli import main
from ray_app.ray_session import end_process, end_with_process

end_with_process()
end_process(main())
