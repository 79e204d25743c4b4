"""Moving documents between processes and machines, and spreading stages over workers.

- documents travel as :mod:`bluesky_ptycho.io.codec` encodes them: one ZeroMQ
  multipart message each (msgpack header, arrays as raw buffers), decoded
  strictly; nothing is pickled, so a message can never run code.
- :mod:`.publisher`: the RunEngine side (``RE.subscribe(Publisher())``).
- :mod:`.server`: ``bluesky-ptycho serve --pipeline FILE``, the back-end.
- :mod:`.control`: commands and status (``bluesky-ptycho status``).
- :mod:`.security`: CURVE keys (``bluesky-ptycho keys``).
- :mod:`.mpi`: a reconstruction split into regions over MPI ranks.
"""

DEFAULT_DATA_PORT = 5577
DEFAULT_CONTROL_PORT = 5578
DEFAULT_HOST = "127.0.0.1"


def address(host: str, port: int) -> str:
    """``tcp://host:port``."""
    return f"tcp://{host}:{port}"
