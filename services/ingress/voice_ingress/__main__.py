"""`python -m voice_ingress`: run the ingress service."""

from voice_runtime.service import run_service

from .service import IngressService
from .settings import IngressSettings


def main() -> None:
    run_service(lambda: IngressService(IngressSettings()))


if __name__ == "__main__":
    main()
