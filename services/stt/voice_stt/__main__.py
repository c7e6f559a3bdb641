"""`python -m voice_stt`: run the stt service."""

from voice_runtime.service import run_service

from .service import SttService
from .settings import SttSettings


def main() -> None:
    run_service(lambda: SttService(SttSettings()))


if __name__ == "__main__":
    main()
