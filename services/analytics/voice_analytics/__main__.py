"""`python -m voice_analytics`: run the analytics service."""

from voice_runtime.service import run_service

from .service import AnalyticsService
from .settings import AnalyticsSettings


def main() -> None:
    run_service(lambda: AnalyticsService(AnalyticsSettings()))


if __name__ == "__main__":
    main()
