"""`python -m voice_brain`: run the brain service."""

from voice_runtime.service import run_service

from .service import BrainService
from .settings import BrainSettings


def main() -> None:
    run_service(lambda: BrainService(BrainSettings()))


if __name__ == "__main__":
    main()
