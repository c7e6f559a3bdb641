"""`python -m voice_tts`: run the tts service."""

from voice_runtime.service import run_service

from .service import TtsService
from .settings import TtsSettings


def main() -> None:
    run_service(lambda: TtsService(TtsSettings()))


if __name__ == "__main__":
    main()
