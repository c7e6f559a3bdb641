"""`python -m voice_control_api`: run the control-api service."""

from voice_runtime.service import run_service

from .service import ControlApiService
from .settings import ControlApiSettings


def main() -> None:
    run_service(lambda: ControlApiService(ControlApiSettings()))


if __name__ == "__main__":
    main()
