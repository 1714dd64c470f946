"""The one base class for errors a user can fix: the CLI prints them as one line."""


class BittuneError(ValueError):
    """Bad input or configuration, with a one-line message naming the problem."""


ERROR_PREFIX = "bittune: error: "


def exit_on_error() -> None:
    """Called first in every component: a :class:`BittuneError` ends the step with its one-line
    message (which KFP shows in the step's log, and ``bittune run`` repeats) instead of a
    traceback. Other exceptions keep their traceback. TensorFlow's start-up noise is kept out
    of the step's log."""
    import os
    import sys

    if os.environ.get("_KFP_RUNTIME"):  # set by KFP's command for a component in its own process
        from components.bit.tf_env import filter_native_noise

        filter_native_noise()

    default = sys.excepthook

    def hook(kind, value, traceback) -> None:
        if issubclass(kind, BittuneError):
            print(f"{ERROR_PREFIX}{value}", file=sys.stderr, flush=True)
        else:
            default(kind, value, traceback)

    sys.excepthook = hook


RESULT_PREFIX = "result: "


def report_result(text: str) -> None:
    """A step's headline figure (images analysed, examples written, accuracy …): one line that
    ``bittune run`` shows when the step ends (the step's log keeps everything else)."""
    print(f"{RESULT_PREFIX}{text}", flush=True)
