"""`python -m voice_media`: run the media service."""

from voice_runtime.service import run_service

from .service import MediaService
from .settings import MediaSettings


def main() -> None:
    run_service(lambda: MediaService(MediaSettings()))


if __name__ == "__main__":
    main()
